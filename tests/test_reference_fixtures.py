"""Our methods against fixtures computed by the authors' own code (tools/reference/*.py, one per reference).

Each fixture holds what the reference computed on the micro ViT of tests/reference_setup.py from stored
weights and fixed batches, with the reference repository and commit in its metadata. Here our code starts from
the same numbers and must reproduce them within the stated tolerances (float32 on both sides; the tolerances
leave room for summation order only), so any drift of a method from its reference fails a test. No reference
code is needed to run these tests.
"""

from __future__ import annotations

import pytest
import torch

import reference_setup as setup
from sr2lora.config import load_config
from sr2lora.engine import training_step
from sr2lora.methods import TaskContext, create_method
from sr2lora.optim import build_optimizer
from sr2lora.schedules import lr_at

CPU = torch.device("cpu")


def fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = setup.read_fixture(name)
    assert meta["micro_vit_sha256"] == setup.file_sha256(setup.FIXTURES / setup.MICRO_VIT), \
        f"{name}: written from other micro ViT weights; rerun {meta['script']}"
    return tensors, meta


def test_fixtures_name_their_reference():
    expected = {"sdlora": "WuYichen-97/SD-Lora-CL", "inflora": "liangyanshuo/InfLoRA",
                "sr2lora": "FqWan24/SR-2-LoRA", "ranpac": "RanPAC/RanPAC"}
    for name, repo in expected.items():
        _, meta = fixture(name)
        assert meta["reference_repo"] == f"github.com/{repo}"
        assert len(meta["reference_commit"]) == 40 and int(meta["reference_commit"], 16) >= 0


def train_task(model, method, ctx, cfg, data, offset, epochs, on_first_step=None):
    """One task as the engine trains it (sr2lora.engine.Trainer.train_task), on fixed batches in a fixed order:
    the method's hooks, its trainable parameters alone unfrozen, the configured optimiser, training_step."""
    method.before_task(ctx)
    params = [p for p in method.trainable_parameters(ctx) if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = build_optimizer(params, cfg.train)
    if on_first_step is not None:
        def pre_hook(*_):
            on_first_step()
            handle.remove()

        handle = opt.register_step_pre_hook(pre_hook)
    model.train()
    tc, step = cfg.train, 0
    for epoch in range(epochs):
        for x, y, *_ in data:
            for g in opt.param_groups:  # the schedule's lr, as the engine sets it before every step
                g["lr"] = lr_at(tc.schedule, tc.lr, epoch, epochs, step, epochs * len(data), tc.warmup_steps)
            training_step(model, method, ctx, opt, x, y, offset)
            step += 1
    for p in params:
        p.requires_grad_(False)
    model.eval()
    model.fold()
    method.after_task(ctx)


# ---------------------------------------------------------------- SD-LoRA


def lora_deltas(model) -> torch.Tensor:
    """(blocks, targets, d, d): Σ_s B_s A_s of every block and adapted target."""
    return torch.stack([torch.einsum("skdr,skri->kdi", torch.stack(list(lora.B)), torch.stack(list(lora.A)))
                        for lora in model.loras]).detach()


@pytest.fixture(scope="module")
def sdlora_run():
    """Our sdlora with its defaults (reference hand-over, magnitudes from 0.8, SGD, q/v) on the fixture's
    tasks: per task the magnitudes, the LoRA updates, the evaluation logits; the first step of task 1."""
    fx, meta = fixture("sdlora")
    tasks, per_task = meta["tasks"], meta["classes_per_task"]
    cfg = load_config("smoke", setup.overrides("sdlora", f"train.lr={meta['lr']}"))
    assert (cfg.train.optimizer, cfg.train.schedule, cfg.model.lora_targets) == ("sgd", "constant", ["q", "v"])
    model = setup.micro_model(cfg)
    method = create_method("sdlora", cfg.method.options, cfg.method.weight)
    eval_x, _ = setup.batches(meta["eval_seed"], list(range(tasks * per_task)), 2, 64)[0]
    out: dict[str, torch.Tensor] = {}
    for t in range(tasks):
        model.add_task(per_task)
        with torch.no_grad():
            for layer, lora in enumerate(model.loras):
                lora.A[t].copy_(fx[f"init.A.{t}"][layer])
            model.heads[t].weight.copy_(fx[f"init.head_w.{t}"])
            model.heads[t].bias.copy_(fx[f"init.head_b.{t}"])
        data = setup.batches(10 + t, list(range(t * per_task, (t + 1) * per_task)), meta["per_class"], meta["batch"])

        def first_step(t=t):
            if t == 1:
                out["grad.alpha"] = method.param.grad.detach().clone()
                out["grad.A"] = torch.stack([lora.A[1].grad for lora in model.loras]).clone()
                out["grad.B"] = torch.stack([lora.B[1].grad for lora in model.loras]).clone()
                out["grad.head_w"] = model.heads[1].weight.grad.clone()

        ctx = TaskContext(task=t, model=model, device=CPU, num_tasks=tasks)
        train_task(model, method, ctx, cfg, data, t * per_task, meta["epochs"], first_step)
        out[f"alpha.{t}"] = method.alpha.clone().float()
        out[f"delta.{t}"] = lora_deltas(model)
        with torch.no_grad():
            out[f"logits.{t}"] = model(eval_x).logits
    return fx, out, meta


def test_sdlora_first_step_matches_the_reference(sdlora_run):
    """The first step of task 1 (past branch handed over, magnitudes re-created at 0.8): the gradients of the
    magnitudes, of A_1 and B_1 (q and v of every block) and of the head equal the reference's to 1e-5."""
    fx, out, _ = sdlora_run
    for key in ("grad.alpha", "grad.A", "grad.B", "grad.head_w"):
        torch.testing.assert_close(out[key].float(), fx[key].float(), rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("t", [0, 1, 2])
def test_sdlora_tasks_match_the_reference(sdlora_run, t):
    """After each task: the learned magnitudes (1e-5), every block's q and v update (1e-5) and the logits of a
    fixed batch (1e-4) equal the authors' code's — SGD steps, hand-over and re-created magnitudes included."""
    fx, out, _ = sdlora_run
    torch.testing.assert_close(out[f"alpha.{t}"], fx[f"alpha.{t}"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[f"delta.{t}"], fx[f"delta.{t}"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[f"logits.{t}"], fx[f"logits.{t}"], rtol=0, atol=1e-4)


def test_sdlora_reference_magnitudes_move(sdlora_run):
    """In the reference itself the magnitudes leave 0.8 (the mechanism acts), and so do ours."""
    fx, out, meta = sdlora_run
    last = meta["tasks"] - 1
    assert float((fx[f"alpha.{last}"] - 0.8).abs().max()) > 0.05
    assert float((out[f"alpha.{last}"] - 0.8).abs().max()) > 0.05


# ---------------------------------------------------------------- InfLoRA


@pytest.fixture(scope="module")
def inflora_run():
    """Our inflora with its defaults (the authors' criterion) on the fixture's tasks and thresholds."""
    fx, meta = fixture("inflora")
    tasks, per_task = meta["tasks"], meta["classes_per_task"]
    eps0, eps1 = meta["eps"]
    # the fixture trains with the reference's SGD branch, one epoch (a constant lr): tools/reference/inflora.py
    cfg = load_config("smoke", setup.overrides(
        "inflora", f"train.lr={meta['lr']}", f"method.eps_start={eps0}", f"method.eps_end={eps1}",
        f"train.optimizer={meta['optimizer']}", "train.schedule=constant", f"train.epochs={meta['epochs']}"))
    assert cfg.method.options["criterion"] == "reference"  # the default
    model = setup.micro_model(cfg)
    method = create_method("inflora", cfg.method.options, cfg.method.weight)
    eval_x, _ = setup.batches(meta["eval_seed"], list(range(tasks * per_task)), 2, 64)[0]
    out: dict[str, torch.Tensor] = {}
    for t in range(tasks):
        model.add_task(per_task)
        with torch.no_grad():
            model.heads[t].weight.copy_(fx[f"init.head_w.{t}"])
            model.heads[t].bias.copy_(fx[f"init.head_b.{t}"])
        data = [(x, y, torch.arange(len(y))) for x, y in
                setup.batches(20 + t, list(range(t * per_task, (t + 1) * per_task)), meta["per_class"], meta["batch"])]

        def first_step(t=t):
            if t <= 1:
                out[f"grad.B.{t}"] = torch.stack([lora.B[t].grad for lora in model.loras]).clone()
                out[f"grad.head_w.{t}"] = model.heads[t].weight.grad.clone()

        ctx = TaskContext(task=t, model=model, loader=data, device=CPU, num_tasks=tasks)
        train_task(model, method, ctx, cfg, data, t * per_task, meta["epochs"], first_step)
        out[f"A.{t}"] = torch.stack([lora.A[t][0] for lora in model.loras]).detach()
        out[f"BA.{t}"] = torch.stack([torch.bmm(lora.B[t], lora.A[t]) for lora in model.loras]).detach()
        out[f"memory_size.{t}"] = torch.tensor(method.report()["subspace_size"][t])
        for layer in range(len(model.loras)):
            out[f"projector.{t}.{layer}"] = (lambda m: m @ m.T)(method.past_basis(layer)).float()
        with torch.no_grad():
            out[f"logits.{t}"] = model(eval_x).logits
    return fx, out, meta


def reference_projector(fx: dict, t: int, layer: int) -> torch.Tensor:
    """The past subspace's projector from the reference's stored basis (its complement when it keeps that)."""
    b = fx[f"basis.{t}.{layer}"].double()
    p = b @ b.T
    return (torch.eye(len(p), dtype=p.dtype) - p if bool(fx[f"retain.{t}"][layer]) else p).float()


def row_signs(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """±1 per row of A (blocks, r): singular vectors are defined up to sign."""
    return torch.sign((ours * ref).sum(-1))


def test_inflora_subspace_sizes_equal_the_reference(inflora_run):
    """The default criterion keeps exactly as many directions per block as the authors' update_DualGPM, after
    every task (first-task rule, the past-subspace and the complement storage, the conversion between them)."""
    fx, out, meta = inflora_run
    sizes = [out[f"memory_size.{t}"].tolist() for t in range(meta["tasks"])]
    assert sizes == [fx[f"memory_size.{t}"].tolist() for t in range(meta["tasks"])]
    assert any(bool(fx[f"retain.{t}"].any()) for t in range(meta["tasks"] - 1)), "fixture lacks a complement"


@pytest.mark.parametrize("t", [0, 1, 2, 3, 4])
def test_inflora_tasks_match_the_reference(inflora_run, t):
    """After each task: A_t (up to each row's sign; SVD of P·C) to 1e-4, the past subspace's projector to 1e-4,
    the trained update B_tA_t of k and v to 1e-5 and the logits of a fixed batch to 1e-4."""
    fx, out, _ = inflora_run
    a_ref = fx[f"A.{t}"]
    signs = row_signs(out[f"A.{t}"], a_ref)
    assert bool((signs != 0).all())
    torch.testing.assert_close(out[f"A.{t}"] * signs[..., None], a_ref, rtol=0, atol=1e-4)
    for layer in range(a_ref.shape[0]):
        torch.testing.assert_close(out[f"projector.{t}.{layer}"], reference_projector(fx, t, layer), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[f"BA.{t}"], fx[f"BA.{t}"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[f"logits.{t}"], fx[f"logits.{t}"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("t", [0, 1])
def test_inflora_first_step_matches_the_reference(inflora_run, t):
    """The first step of tasks 0 and 1: the gradients of B_t (k and v, columns aligned with A_t's row signs)
    and of the head equal the reference's to 1e-5."""
    fx, out, _ = inflora_run
    signs = row_signs(out[f"A.{t}"], fx[f"A.{t}"])  # (blocks, r)
    torch.testing.assert_close(out[f"grad.B.{t}"] * signs[:, None, None, :], fx[f"grad.B.{t}"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[f"grad.head_w.{t}"], fx[f"grad.head_w.{t}"], rtol=1e-4, atol=1e-5)
