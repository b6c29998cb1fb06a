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
from sr2lora.methods import TaskContext, create_method
from sr2lora.train.optim import build_optimizer
from sr2lora.train.schedules import lr_at
from sr2lora.train.step import training_step

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


def train_task(model, method, ctx, cfg, data, offset, epochs, on_step=None):
    """One task as the engine trains it (sr2lora.train.engine.Trainer.train_task), on fixed batches in a fixed order:
    the method's hooks, its trainable parameters alone unfrozen, the configured optimiser, training_step."""
    method.before_task(ctx)
    params = [p for p in method.trainable_parameters(ctx) if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = build_optimizer(params, cfg.train)
    if on_step is not None:  # called before every optimiser step with the step's index
        count = [0]

        def pre_hook(*_):
            on_step(count[0])
            count[0] += 1

        opt.register_step_pre_hook(pre_hook)
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


def micro_setup(name: str, cfg, meta: dict):
    """(our micro model, method ``name``, the fixture's evaluation images) for a config built on the fixture."""
    model = setup.micro_model(cfg)
    method = create_method(name, cfg.method.options, cfg.method.weight)
    classes = list(range(meta["tasks"] * meta["classes_per_task"]))
    return model, method, setup.batches(meta["eval_seed"], classes, 2, 64)[0][0]


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
    model, method, eval_x = micro_setup("sdlora", cfg, meta)
    out: dict[str, torch.Tensor] = {}
    for t in range(tasks):
        model.add_task(per_task)
        with torch.no_grad():
            for layer, lora in enumerate(model.loras):
                lora.A[t].copy_(fx[f"init.A.{t}"][layer])
            model.heads[t].weight.copy_(fx[f"init.head_w.{t}"])
            model.heads[t].bias.copy_(fx[f"init.head_b.{t}"])
        data = setup.batches(10 + t, list(range(t * per_task, (t + 1) * per_task)), meta["per_class"], meta["batch"])

        def first_step(step, t=t):
            if t == 1 and step == 0:
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
    # the fixture trains with the reference's SGD branch, one epoch (a constant lr): tools/reference/fixture_inflora.py
    cfg = load_config("smoke", setup.overrides(
        "inflora", f"train.lr={meta['lr']}", f"method.eps_start={eps0}", f"method.eps_end={eps1}",
        f"train.optimizer={meta['optimizer']}", "train.schedule=constant", f"train.epochs={meta['epochs']}"))
    assert cfg.method.options["criterion"] == "reference"  # the default
    model, method, eval_x = micro_setup("inflora", cfg, meta)
    out: dict[str, torch.Tensor] = {}
    for t in range(tasks):
        model.add_task(per_task)
        with torch.no_grad():
            model.heads[t].weight.copy_(fx[f"init.head_w.{t}"])
            model.heads[t].bias.copy_(fx[f"init.head_b.{t}"])
        data = [(x, y, torch.arange(len(y))) for x, y in
                setup.batches(20 + t, list(range(t * per_task, (t + 1) * per_task)), meta["per_class"], meta["batch"])]

        def first_step(step, t=t):
            if t <= 1 and step == 0:
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


# ---------------------------------------------------------------- SR²-LoRA and classifier alignment


@pytest.fixture(scope="module")
def sr2lora_run():
    """Our sr2lora (spectral relation loss, λ = 1) on the fixture's two tasks with the reference's SGD branch,
    then the class statistics and classifier alignment with the fixture's sampling seed."""
    from sr2lora.classifiers.gaussians import ClassGaussians, align_classifier

    fx, meta = fixture("sr2lora")
    tasks, per_task = meta["tasks"], meta["classes_per_task"]
    cfg = load_config("smoke", setup.overrides(
        "sr2lora", f"train.lr={meta['lr']}", f"train.optimizer={meta['optimizer']}", "train.schedule=constant",
        f"train.epochs={meta['epochs']}"))
    model, method, eval_x = micro_setup("sr2lora", cfg, meta)
    gaussians = ClassGaussians(model.embed_dim)
    out: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    regularizer = method.regularizer

    def remember(new, old, ctx):  # the method's own loss, its value kept for the comparison
        last["reg"] = reg = regularizer(new, old, ctx)
        return reg

    method.regularizer = remember
    for t in range(tasks):
        model.add_task(per_task)
        with torch.no_grad():
            for layer, lora in enumerate(model.loras):
                lora.A[t].copy_(fx[f"init.A.{t}"][layer])
            model.heads[t].weight.copy_(fx[f"init.head_w.{t}"])
            model.heads[t].bias.copy_(fx[f"init.head_b.{t}"])
        classes = list(range(t * per_task, (t + 1) * per_task))
        data = setup.batches(30 + t, classes, meta["per_class"], meta["batch"])

        def on_step(step, t=t):
            if t == 1 and step == meta["recorded_step"]:
                out["grad.A"] = torch.stack([lora.A[1].grad for lora in model.loras]).clone()
                out["grad.B"] = torch.stack([lora.B[1].grad for lora in model.loras]).clone()
                out["grad.head_w"] = model.heads[1].weight.grad.clone()
                out["loss.relation"] = last["reg"].detach()

        ctx = TaskContext(task=t, model=model, device=CPU, num_tasks=tasks)
        train_task(model, method, ctx, cfg, data, t * per_task, meta["epochs"], on_step)
        out[f"AB.{t}"] = torch.stack([torch.bmm(lora.B[t], lora.A[t]) for lora in model.loras]).detach()
        x_all, y_all = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
        with torch.no_grad():
            feats = model(x_all, tasks=t + 1, logits=False).feature
        gaussians.add_classes(feats, y_all, classes, cfg.ca.cov_shrink)
        if t > 0:
            w, b = model.heads.concatenated(t + 1)
            out["ca.weight_before"], out["ca.bias_before"] = w.clone(), b.clone()
            w2, b2 = align_classifier(
                w, b, gaussians, (t + 1) * per_task, epochs=meta["ca_epochs"], lr=meta["ca_lr"], momentum=0.9,
                weight_decay=0.0, batch_size=meta["batch"], samples_factor=meta["ca_samples_factor"], tau=0.1,
                t_max=5, generator=torch.Generator().manual_seed(meta["ca_seed"]), minibatch="reference")
            out["ca.weight"], out["ca.bias"] = w2, b2
            model.heads.load_concatenated(w2, b2)
        with torch.no_grad():
            out[f"logits.{t}"] = model(eval_x).logits
    out["class_means"] = torch.stack([gaussians.means[c] for c in range(tasks * per_task)])
    return fx, out, meta


def test_sr2lora_relation_loss_equals_the_reference():
    """The spectral relation loss (R = H Hᵀ per sample, sorted eigenvalues, smooth-L1 β = 1, mean) and its
    gradient on the same stored per-layer features as the reference's ``spectral_relation_loss``: to float32
    rounding (1e-6 relative)."""
    from sr2lora.methods.losses import spectral_relation_loss

    fx, _ = fixture("sr2lora")
    h_new = fx["unit.h_new"].clone().requires_grad_(True)
    loss = spectral_relation_loss(h_new, fx["unit.h_old"])
    loss.backward()
    torch.testing.assert_close(loss.detach().reshape(1), fx["unit.loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(h_new.grad, fx["unit.grad"], rtol=1e-5, atol=1e-7)


def test_sr2lora_loss_and_gradients_match_the_reference(sr2lora_run):
    """Task 1's second step (B_1 ≠ 0, so the relation term has a gradient) in the whole model: the relation loss
    to 2e-3 relative and the gradients of A_1, B_1 (k and v of every block) and of the head to 1e-4. (The loss
    is a small difference of eigenvalues of order 10²: float32 differences of 1e-6 between the two ViT forwards
    come out at ~1e-4 relative in it; the loss alone is compared exactly above.)"""
    fx, out, _ = sr2lora_run
    assert float(fx["loss.relation"]) > 1e-3  # the recorded step does exercise the relation loss
    torch.testing.assert_close(out["loss.relation"].reshape(1), fx["loss.relation"], rtol=2e-3, atol=0)
    for key in ("grad.A", "grad.B", "grad.head_w"):
        torch.testing.assert_close(out[key], fx[key], rtol=1e-3, atol=1e-4, msg=key)


def test_sr2lora_tasks_match_the_reference(sr2lora_run):
    """After each task the trained updates B_tA_t (k and v), the class means and the logits of a fixed batch
    (after alignment) equal the reference's: task 0 (cross-entropy only) to 1e-6, task 1 (with the relation
    loss, whose float32 noise is ~1e-4 relative, see above) to 1e-3 relative."""
    fx, out, _ = sr2lora_run
    torch.testing.assert_close(out["AB.0"], fx["AB.0"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["logits.0"], fx["logits.0"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["AB.1"], fx["AB.1"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out["logits.1"], fx["logits.1"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out["class_means"], fx["class_means"], rtol=1e-3, atol=1e-3)


def test_classifier_alignment_matches_the_reference(sr2lora_run):
    """Classifier alignment (20 epochs, the reference's Gaussian sampling order under one seed, mini-batches of
    5 × batch, entropy + LogitNorm CE, SGD with CosineAnnealingLR(5)): the aligned heads equal the reference's
    to 5e-4 (the statistics come from task 1's model, see above), and alignment did move them (by > 0.1)."""
    fx, out, _ = sr2lora_run
    torch.testing.assert_close(out["ca.weight_before"], fx["ca.weight_before"], rtol=0, atol=1e-5)
    assert float((fx["ca.weight"] - fx["ca.weight_before"]).abs().max()) > 0.1
    torch.testing.assert_close(out["ca.weight"], fx["ca.weight"], rtol=0, atol=5e-4)
    torch.testing.assert_close(out["ca.bias"], fx["ca.bias"], rtol=0, atol=5e-4)


# ---------------------------------------------------------------- RanPAC's ridge head


def test_ranpac_ridge_head_matches_the_reference():
    """RanPAC's head on the fixture's features, task by task: the projected Gram matrix G and class sums Q
    accumulated over tasks (1e-5 relative; the reference sums in float32), the ridge weights at the λ it chose
    (1e-3 relative, 5e-4 absolute: its solve is float32), and, on the reference's own λ split (the task's first 80 % fit, last 20 % score), our
    held-out error picks the same λ. (Our default split is a seeded per-class share pooled over all tasks so
    far: docs/method.md.)"""
    from sr2lora.classifiers import create_classifier
    from sr2lora.classifiers.ridge import ridge_solve, validation_errors

    fx, meta = fixture("ranpac")
    tasks, per_task = meta["tasks"], meta["classes_per_task"]
    cfg = load_config("smoke", setup.overrides("ranpac", f"classifier.rp_dim={meta['rp_dim']}"))
    offsets = [per_task * t for t in range(tasks + 1)]
    clf = create_classifier(cfg, fx["features.0"].shape[1], offsets)
    clf.projection = fx["W_rand"].clone()  # the reference's draw (ours seeds its own)
    for t in range(tasks):
        feats, labels = fx[f"features.{t}"], fx[f"labels.{t}"]
        clf.fit_task(t, feats, labels, list(range(offsets[t], offsets[t + 1])))
        clf.finish_task(t, None, 0)
        g, c = clf.g_fit + clf.g_val, clf.c_fit + clf.c_val
        torch.testing.assert_close(g.float(), fx[f"G.{t}"], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(c.float(), fx[f"Q.{t}"][:, : offsets[t + 1]], rtol=1e-5, atol=1e-4)
        lam = float(fx["lambda"][t])
        weight = ridge_solve(g, c, lam).T.float()
        torch.testing.assert_close(weight, fx[f"weight.{t}"], rtol=1e-3, atol=5e-4)  # its solve is float32
        phi = clf.phi(feats)
        y = torch.nn.functional.one_hot(labels, offsets[t + 1]).double()
        n_fit = int(len(y) * 0.8)
        errors = validation_errors(phi[:n_fit].T @ phi[:n_fit], phi[:n_fit].T @ y[:n_fit], phi[n_fit:].T @ phi[n_fit:],
                                   phi[n_fit:].T @ y[n_fit:], float(y[n_fit:].pow(2).sum()), clf.lambdas)
        assert clf.lambdas[int(torch.tensor(errors).argmin())] == lam
