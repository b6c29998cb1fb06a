"""The baselines: InfLoRA, SD-LoRA (and its -RR/-KD variants) and the joint-training upper bound.

Each runs the smoke preset end to end, resumes exactly from a checkpoint, and keeps its defining property:
InfLoRA's A_t is fixed and orthogonal to the past tasks' input subspace; SD-LoRA's past directions stay fixed
while their magnitudes move; `joint` sees every class in one task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, PRECISIONS, read_results, run_cli, stopped_run
from sr2lora import load_run
from sr2lora.config import load_config
from sr2lora.core.errors import CheckpointError
from sr2lora.data.run_data import prepare_data
from sr2lora.methods.base import TaskContext
from sr2lora.methods.inflora import design_down_projection, grow_memory
from sr2lora.methods.sdlora import SDLoRA, SDLoRAOptions, fit_directions, task_rank
from sr2lora.models.lora import LoRAQKV
from sr2lora.train.engine import Trainer

SMOKE = [*FAST, "train.precision=fp32"]  # as the shared runs of smoke_runs
ACC_KEYS = ["accuracy_matrix", "acc_curve", "final_acc", "avg_acc", "class_order", "task_test_counts"]


@pytest.fixture
def smoke_runs(smoke_run):
    """The shared uninterrupted smoke run of a method (fp32 training unless asked otherwise)."""

    def get(method: str, precision: str = "fp32") -> tuple[Path, dict]:
        return smoke_run(f"method.name={method}", precision=precision)

    return get


def trainer(method: str, *extra: str) -> Trainer:
    return Trainer(load_config("smoke", [f"method.name={method}", *SMOKE, *extra]), None, progress=False)


# ---------------------------------------------------------------- every preset path: the smoke run


@pytest.mark.parametrize("method", ["inflora", "sdlora", "joint"])
def test_smoke_run_writes_results(smoke_runs, method):
    _, res = smoke_runs(method)
    assert res["method"] == method
    tasks = 1 if method == "joint" else 5
    assert res["num_tasks"] == tasks
    assert len(res["accuracy_matrix"]) == tasks and len(res["accuracy_matrix"][-1]) == tasks
    assert 0.0 <= res["final_acc"] <= 100.0


def test_joint_sees_all_classes_in_one_task(smoke_runs):
    res, inc = smoke_runs("joint")[1], smoke_runs("inflora")[1]
    assert res["task_offsets"] == [0, 20]  # the 20 smoke classes in one task
    assert res["class_order"] == inc["class_order"]  # same seeded order as the incremental runs
    assert res["task_test_counts"] == [sum(inc["task_test_counts"])]  # every test image, in one task
    tr = trainer("joint")
    assert tr.scenario.num_tasks == 1 and tr.scenario.task_size(0) == 20


@pytest.mark.parametrize("method,aligned", [("joint", True), ("seqlora", False)])
def test_classifier_alignment_after_the_first_task(method, aligned):
    """The reference aligns nothing after task 0 of a sequence; `joint` has only that task and is aligned there,
    like every incremental method's final head."""
    tr = trainer(method)
    tr.model.add_task(tr.scenario.task_size(0))
    tr.train_task(0)
    tr.compute_statistics(0)
    before = [p.detach().clone() for p in tr.model.heads.parameters()]
    tr.align(0)
    after = list(tr.model.heads.parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(before, after))
    assert changed == aligned


@pytest.mark.parametrize("method", ["inflora", "sdlora"])
def test_resume_is_exact(smoke_runs, tmp_path, method):
    """Stopped after task 2's checkpoint, resumed: the method state (InfLoRA's subspaces, SD-LoRA's
    magnitudes) comes back from method.safetensors and the results equal the uninterrupted run's."""
    _, reference = smoke_runs(method)
    out = stopped_run(tmp_path / "run", f"method.name={method}")
    assert run_cli("run", "--resume", out, "--quiet") == 0
    resumed = read_results(out)
    for key in [*ACC_KEYS, "method_state"]:  # method_state: SD-LoRA's magnitudes, InfLoRA's subspace sizes
        assert resumed[key] == reference[key], key


@pytest.mark.parametrize("method", ["inflora", "sdlora", "joint"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_final_model_reloads_with_the_reported_accuracy(smoke_runs, method, precision):
    """Past tasks live in the LoRA factors (SD-LoRA bakes its magnitudes into B), so `load_run`/`export`
    see the final model; SD-LoRA refuses an earlier task's model, which its checkpoint no longer holds."""
    out, res = smoke_runs(method, precision)
    run = load_run(out)
    data = prepare_data(run.config, single_task=method == "joint")
    x = torch.stack([run.transform(data.eval_images.load(i)) for i in range(len(data.eval_labels))])
    with torch.no_grad():
        pred = run.model(x).argmax(-1).numpy()
    assert 100.0 * float(np.mean(pred == data.eval_labels)) == pytest.approx(res["final_acc"], abs=1e-6)
    if method == "sdlora":
        with pytest.raises(CheckpointError, match="only the final model"):
            load_run(out, task=1)


# ---------------------------------------------------------------- InfLoRA


def test_inflora_energy_criterion():
    """Smallest k whose directions hold a fraction ε of the energy; p=2 is the authors' code (σ⁴)."""
    cov = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    free = torch.eye(6, dtype=torch.float64)
    assert grow_memory(cov, free, 0.6)[1] == 2  # 0.4, 0.7
    assert grow_memory(cov, free, 0.5, power=1)[1] == 2  # 0.4 < 0.5
    assert grow_memory(cov, free, 0.5, power=2)[1] == 1  # 16/30 ≥ 0.5
    assert grow_memory(cov, free, 1.0)[1] == 4  # never a zero-energy direction
    rest, _ = grow_memory(cov, free, 0.6)
    a = design_down_projection(cov, rest, 3)  # next task: the strongest free directions, orthogonal to e1, e2
    assert torch.allclose(a[:2].abs(), torch.eye(6, dtype=torch.float64)[2:4])
    assert float(a[:, :2].abs().max()) == 0.0


def test_inflora_a_is_fixed_and_orthogonal_to_the_past_subspace():
    tr = trainer("inflora")
    method = tr.method
    designed, past = {}, {}
    before = method.before_task

    def spy(ctx):
        past[ctx.task] = [method.past_basis(i).clone() for i in range(len(method.bases))]
        before(ctx)
        designed[ctx.task] = [lora.A[ctx.task].detach().clone() for lora in ctx.model.loras]

    method.before_task = spy
    for t in range(2):
        tr.model.add_task(tr.scenario.task_size(t))
        tr.train_task(t)
    for t in range(2):
        for layer, lora in enumerate(tr.model.loras):
            assert torch.equal(lora.A[t], designed[t][layer]), "A_t changed during training"
            assert not lora.A[t].requires_grad
            assert float(lora.B[t].abs().max()) > 0, "B_t was trained"
            assert torch.equal(lora.A[t][0], lora.A[t][1]), "k and v share one A per layer"
    for layer, lora in enumerate(tr.model.loras):
        u = past[1][layer]  # the memory A_1 was designed against (tasks < 1)
        assert 0 < u.shape[1] < u.shape[0]
        rows = lora.A[1][0].double()
        rows = rows[rows.norm(dim=1) > 0]
        rows = rows / rows.norm(dim=1, keepdim=True)
        assert float((rows @ u).abs().max()) < 1e-5
        grown = method.past_basis(layer)  # after task 1 the memory holds more directions, still orthonormal
        assert grown.shape[1] > u.shape[1]
        assert torch.allclose(grown.T @ grown, torch.eye(grown.shape[1], dtype=torch.float64), atol=1e-8)
    state = method.state_tensors()
    method.load_state_tensors(state)
    assert all(torch.equal(b, state[f"basis.{i}"]) for i, b in enumerate(method.bases))


# ---------------------------------------------------------------- SD-LoRA


def test_lora_scales_multiply_unfolded_branches():
    torch.manual_seed(0)
    lora = LoRAQKV(torch.nn.Linear(8, 24), targets=["q", "v"], rank=2)
    for _ in range(3):
        lora.add_task()
        with torch.no_grad():
            lora.B[-1].normal_()
    lora.fold()
    lora.active = 3
    x = torch.randn(4, 5, 8)
    folded = lora(x)
    lora.scales = torch.ones(3)
    assert torch.allclose(lora(x), folded, atol=1e-5)  # γ = 1 is the folded model
    gamma = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    lora.scales = gamma
    y = lora(x)
    expected = torch.nn.functional.linear(x, lora.base.weight, lora.base.bias)
    expected = expected + sum(
        torch.nn.functional.linear(x, g * lora.task_delta(s)) for s, g in enumerate(gamma.tolist())
    )
    assert torch.allclose(y, expected, atol=1e-4)
    y.sum().backward()
    assert gamma.grad is not None and bool(torch.all(gamma.grad != 0))


def _directions(model, s: int) -> list[torch.Tensor]:
    out = []
    for lora in model.loras:
        e = torch.bmm(lora.B[s], lora.A[s]).detach().double()
        out.append(e / e.flatten(1).norm(dim=1).view(-1, 1, 1))
    return out


def test_sdlora_past_directions_fixed_magnitudes_learned():
    tr = trainer("sdlora")
    method = tr.method
    dirs, alphas = {}, []
    for t in range(3):
        tr.model.add_task(tr.scenario.task_size(t))
        tr.train_task(t)
        dirs[t] = _directions(tr.model, t)
        alphas.append(method.alpha.clone())
        assert alphas[-1].shape == (t + 1,)  # one shared magnitude per task (paper §4.1)
    for s in range(2):
        for before, after in zip(dirs[s], _directions(tr.model, s)):
            assert torch.allclose(before, after, atol=1e-5), f"direction of task {s} moved"
        assert float(alphas[-1][s]) != float(alphas[s][s]), f"magnitude of task {s} never moved"
    assert all(lora.scales is None for lora in tr.model.loras)


@pytest.mark.parametrize("handover", ["keep", "normalize", "reference"])
def test_sdlora_handover_and_the_models_output(handover):
    """At the start of task 1, task 0's trained update becomes a fixed direction with a magnitude. With
    ``handover=keep`` the model computes exactly what it computed at the end of task 0 (every layer's [CLS]
    feature to 1e-5): only the parametrisation changes. ``normalize`` (the paper's Eq. 4 read literally) sets every
    projection's update to norm |α_0|, which changes the function whenever a trained update's norm is not |α_0|.
    ``reference`` (default, the authors' code) makes every projection's B_0 A_0 equal 0.8·B_0A_0/(‖B_0‖‖A_0‖):
    ‖B_0‖_F‖A_0‖_F = 0.8 with the trained direction, and the magnitudes restart at 0.8."""
    tr = trainer("sdlora", f"method.handover={handover}")
    model = tr.model
    model.add_task(tr.scenario.task_size(0))
    tr.train_task(0)
    model.eval()
    x = torch.rand(6, 3, tr.cfg.data.image_size, tr.cfg.data.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x, layers=True, logits=False).layers.clone()
    norms = [float((lora.B[0][k] @ lora.A[0][k]).norm()) for lora in model.loras for k in range(2)]
    model.add_task(tr.scenario.task_size(1))
    tr.method.before_task(TaskContext(task=1, model=model, device=torch.device("cpu"), num_tasks=2))
    with torch.no_grad():
        after = model(x, layers=True, logits=False).layers
    alpha0 = abs(float(tr.method.alpha[0]))
    if handover == "reference":
        for lora in model.loras:
            for k in range(2):
                assert float(lora.B[0][k].norm()) * float(lora.A[0][k].norm()) == pytest.approx(0.8, rel=1e-5)
        assert torch.allclose(tr.method.param.detach(), torch.full((2,), 0.8))  # past and new magnitudes
        assert not torch.allclose(after, before, atol=1e-3)  # the trained norms were not 0.8: the function changed
        dirs = _directions(model, 0)
        model.clear_branch_scales()
        tr.method._hand_over(model, 1)  # handing over again (next task) keeps the direction and the norm
        for before_dir, after_dir in zip(dirs, _directions(model, 0)):
            assert torch.allclose(before_dir, after_dir, atol=1e-6)
    elif handover == "keep":
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    else:  # every projection's update is now |α_0| times a unit-norm direction ...
        for lora in model.loras:
            for k in range(2):
                assert float((lora.B[0][k] @ lora.A[0][k]).norm()) == pytest.approx(alpha0, rel=1e-4)
        assert max(abs(n - alpha0) for n in norms) > 1e-3  # ... the trained norms were not |α_0| ...
        assert not torch.allclose(after, before, atol=1e-3)  # ... so the function changed


def test_sdlora_rank_reduction_masks_trailing_components():
    assert task_rank(0, 10, [4, 8], [8, 6]) == 10
    assert task_rank(4, 10, [4, 8], [8, 6]) == 8 and task_rank(11, 10, [4, 8], [8, 6]) == 6
    tr = trainer("sdlora", "method.rr_tasks=[1]", "method.rr_ranks=[2]", "method.magnitudes=layer")
    for t in range(2):
        tr.model.add_task(tr.scenario.task_size(t))
        tr.train_task(t)
    assert tr.method.alpha.shape == (2, len(tr.model.loras), 2)
    for lora in tr.model.loras:  # model.rank = 4 in the smoke preset; task 1 has rank 2
        assert float(lora.A[1][:, 2:].abs().max()) == 0 and float(lora.B[1][:, :, 2:].abs().max()) == 0
        assert float(lora.B[1][:, :, :2].abs().max()) > 0
        assert float(lora.B[0][:, :, 2:].abs().max()) > 0  # task 0 kept its full rank


def test_sdlora_kd_absorbs_a_representable_direction():
    beta, res = fit_directions(torch.eye(3), [torch.eye(3) / 3**0.5])
    assert res == pytest.approx(0.0, abs=1e-12) and float(beta[0]) == pytest.approx(3**0.5)
    torch.manual_seed(0)
    lora = LoRAQKV(torch.nn.Linear(6, 18), targets=["k", "v"], rank=2)
    lora.add_task()
    lora.add_task()
    with torch.no_grad():
        lora.B[0].normal_()
        lora.A[1].copy_(lora.A[0])
        lora.B[1].copy_(-0.5 * lora.B[0])  # task 1's update = −½ · task 0's: representable
        lora.B[1][1].normal_()  # ... but not for target v
    total = lora.task_delta(0) + lora.task_delta(1)

    class Model:
        loras = [lora]

    method = SDLoRA(SDLoRAOptions(kd_tau=1e-6, handover="keep"))
    method.alpha = torch.ones(2, dtype=torch.float64)
    absorbed = [[False, False]]
    method._distill(Model, 1, absorbed)
    assert absorbed == [[True, False]]
    with torch.no_grad():
        assert float(lora.A[1][0].abs().max()) == 0 and float(lora.B[1][0].abs().max()) == 0
        assert float(lora.B[1][1].abs().max()) > 0
        assert torch.allclose(lora.task_delta(0) + lora.task_delta(1), total, atol=1e-5)  # function kept


def test_sdlora_is_not_seqlora(smoke_run):
    """The check that would have caught the inert SD-LoRA (docs/baselines.md), at the learning rates a real preset gives
    (sdlora's SGD 1e-2; the old default's Adam 5e-4), on the smoke sequence: the learned magnitudes leave their
    start by more than 0.015 (they did not with the old default: under 0.015, asserted too), and the predictions
    differ from those of seqlora trained with the same optimiser, lr and targets."""
    def moved(res: dict) -> float:
        state = res["method_state"]
        assert len(state["magnitudes"]) == res["num_tasks"] == len(state["magnitudes"][-1])
        return max(abs(a - state["init_magnitude"]) for row in state["magnitudes"] for a in row)

    recipe = ("train.optimizer=sgd", "train.lr=0.01", "train.schedule=constant", "model.lora_targets=[q, v]")
    sd_out, sd = smoke_run("method.name=sdlora", "train.lr=0.01")
    seq_out, _ = smoke_run("method.name=seqlora", *recipe)
    _, old = smoke_run("method.name=sdlora", "method.handover=keep", "method.init_magnitude=1",
                       "train.optimizer=adam", "train.lr=0.0005", "train.schedule=reference",
                       "model.lora_targets=[k, v]")
    assert moved(sd) > 0.015 > moved(old)
    runs = [load_run(sd_out), load_run(seq_out)]
    data = prepare_data(runs[0].config, single_task=False)
    x = torch.stack([runs[0].transform(data.eval_images.load(i)) for i in range(len(data.eval_labels))])
    with torch.no_grad():
        preds = [run.model(x).argmax(-1) for run in runs]
    assert float((preds[0] != preds[1]).float().mean()) > 0.05
