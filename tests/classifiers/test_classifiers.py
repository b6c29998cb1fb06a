"""The classifiers (ca, ncm, ridge) and the training-free baselines (ncm, ranpac, ranpac-fsa).

Numerics: the incremental ridge solution is the one-shot ridge fit on all data, whatever the task order; NCM
classifies as the closed form says; the λ selection picks the known optimum; classifier alignment takes exactly C
steps per epoch. End to end on the smoke preset: each classifier runs, resumes exactly, reloads (predict) and
exports with the reported accuracies.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import FAST, PRECISIONS, read_results, run_cli, stopped_run
from sr2lora import export_run, load_run
from sr2lora.classifiers import create_classifier
from sr2lora.classifiers.gaussians import ClassGaussians, align_classifier
from sr2lora.classifiers.ridge import holdout_mask, ridge_solve, validation_errors
from sr2lora.config import ConfigError, load_config
from sr2lora.data.run_data import prepare_data
from sr2lora.models.heads import TaskHeads

F64 = torch.float64
SOLVE_RTOL = 1e-9  # float64 ridge solutions: incremental vs one-shot (measured ~1e-13)
WEIGHT_RTOL = 1e-5  # the float32 copy that predicts vs the float64 solution
SMOKE = list(FAST)
ACC_KEYS = ["accuracy_matrix", "acc_curve", "final_acc", "avg_acc", "class_order", "task_test_counts"]


def config(**classifier):
    return load_config(None, {"classifier": classifier})


def synthetic(offsets, dim=12, per_class=30, seed=0):
    """Features (N, d) float32 and labels of classes 0..offsets[-1]−1, each around its own random centre."""
    g = torch.Generator().manual_seed(seed)
    classes = offsets[-1]
    centres = 2 * torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y


def feed(clf, x, y, offsets, order=None):
    """Give the classifier task after task (samples within each task in ``order``), solving after each."""
    for t in range(len(offsets) - 1):
        sel = torch.nonzero((y >= offsets[t]) & (y < offsets[t + 1])).flatten()
        if order is not None:
            sel = sel[torch.randperm(len(sel), generator=torch.Generator().manual_seed(order + t))]
        clf.fit_task(t, x[sel], y[sel], list(range(offsets[t], offsets[t + 1])))
        clf.finish_task(t, None, seed=0)


# ---------------------------------------------------------------- ridge


def test_incremental_ridge_equals_one_shot_fit_in_any_task_order():
    offsets = [0, 3, 5, 9]
    lam = 0.5
    x, y = synthetic(offsets)
    clf = create_classifier(config(kind="ridge", rp_dim=40, lambdas=[lam]), x.shape[1], offsets)
    feed(clf, x, y, offsets, order=1)
    phi = clf.phi(x)  # ReLU(x W) in float64
    onehot = F.one_hot(y, offsets[-1]).to(F64)
    direct = torch.linalg.solve(phi.T @ phi + lam * torch.eye(phi.shape[1], dtype=F64), phi.T @ onehot)
    g, c = clf.g_fit + clf.g_val, clf.c_fit + clf.c_val
    assert torch.allclose(g, phi.T @ phi, rtol=1e-12, atol=1e-9)
    incremental = ridge_solve(g, c, lam)
    assert torch.allclose(incremental, direct, rtol=SOLVE_RTOL, atol=SOLVE_RTOL * direct.abs().max())
    w = clf.weights[len(offsets) - 2].double()  # what predicts after the last task
    assert torch.allclose(w, direct.T, rtol=WEIGHT_RTOL, atol=WEIGHT_RTOL * direct.abs().max())

    # Another task order and split: classes [6, 7, 8], then [0, 1, 2], then [3, 4, 5] (relabelled 0..8 so).
    perm = torch.tensor([6, 7, 8, 0, 1, 2, 3, 4, 5])
    new_label = torch.empty_like(perm)
    new_label[perm] = torch.arange(len(perm))
    offsets2 = [0, 3, 6, 9]
    clf2 = create_classifier(config(kind="ridge", rp_dim=40, lambdas=[lam]), x.shape[1], offsets2)
    feed(clf2, x, new_label[y], offsets2, order=7)
    reordered = ridge_solve(clf2.g_fit + clf2.g_val, clf2.c_fit + clf2.c_val, lam)
    assert torch.equal(clf2.projection, clf.projection)  # the same seeded projection
    assert torch.allclose(reordered[:, new_label], direct, rtol=SOLVE_RTOL, atol=SOLVE_RTOL * direct.abs().max())


@pytest.mark.parametrize("tau, sigma", [(0.1, 1.0), (1.0, 1.0)])
def test_lambda_selection_finds_the_known_optimum(tau, sigma):
    """y = x w + noise with w ~ N(0, τ²I) and noise N(0, σ²): the best ridge λ for prediction is σ²/τ² (the
    posterior mean); a large held-out set finds that decade on the grid."""
    g = torch.Generator().manual_seed(0)
    d, k, n_fit, n_val = 20, 3, 60, 20000
    w = tau * torch.randn(d, k, generator=g, dtype=F64)

    def draw(n):
        x = torch.randn(n, d, generator=g, dtype=F64)
        return x, x @ w + sigma * torch.randn(n, k, generator=g, dtype=F64)

    (xf, yf), (xv, yv) = draw(n_fit), draw(n_val)
    lambdas = [10.0**e for e in range(-4, 7)]
    errors = validation_errors(xf.T @ xf, xf.T @ yf, xv.T @ xv, xv.T @ yv, float((yv**2).sum()), lambdas)
    for lam, err in zip(lambdas, errors):  # the sums give the explicit held-out error
        beta = torch.linalg.solve(xf.T @ xf + lam * torch.eye(d, dtype=F64), xf.T @ yf)
        explicit = float(((yv - xv @ beta) ** 2).sum())
        assert err == pytest.approx(explicit, rel=1e-9)
    assert lambdas[int(np.argmin(errors))] == pytest.approx(sigma**2 / tau**2)


def test_ridge_classifier_picks_the_best_held_out_lambda():
    """Through fit_task/finish_task: the chosen λ minimises the explicit squared error on the held-out split."""
    offsets = [0, 4, 8]
    lambdas = [10.0**e for e in range(-6, 7)]
    x, y = synthetic(offsets, per_class=12, seed=3)
    cfg = config(kind="ridge", rp_dim=64, lambdas=lambdas, val_fraction=0.25, seed=5)
    clf = create_classifier(cfg, x.shape[1], offsets)
    feed(clf, x, y, offsets)
    held = torch.zeros(len(y), dtype=torch.bool)
    for t in range(2):
        sel = torch.nonzero((y >= offsets[t]) & (y < offsets[t + 1])).flatten()
        held[sel] = holdout_mask(y[sel], 0.25, (cfg.seed, 5, t))
    assert int(held.sum()) == clf.n_val == 2 * 4 * 3  # 3 of each class's 12 samples
    phi, onehot = clf.phi(x), F.one_hot(y, 8).to(F64)
    errors = []
    for lam in lambdas:
        fit = ~held
        beta = torch.linalg.solve(phi[fit].T @ phi[fit] + lam * torch.eye(64, dtype=F64), phi[fit].T @ onehot[fit])
        errors.append(float(((onehot[held] - phi[held] @ beta) ** 2).sum()))
    assert clf.chosen[1] == lambdas[int(np.argmin(errors))]


# ---------------------------------------------------------------- NCM


def test_ncm_classifies_by_cosine_to_the_class_means():
    offsets = [0, 2, 3]
    means = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]], dtype=F64)
    delta = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.3, -0.4]], dtype=F64)
    # each class: μ ± δ_i, so its training mean is exactly μ
    x = torch.cat([torch.stack([m + d for d in delta] + [m - d for d in delta]) for m in means])
    y = torch.arange(3).repeat_interleave(4)
    clf = create_classifier(config(kind="ncm"), 3, offsets)
    feed(clf, x.float(), y, offsets)
    assert torch.allclose(clf.means(3), means, atol=1e-6)
    queries = torch.tensor([[1.0, 1.1, 0.0], [1.0, 0.9, 0.0], [0.1, 0.1, -0.5], [5.0, -1.0, -4.9]])
    head = clf.head(TaskHeads(3), 1)
    logits = head(queries)
    # the closed form: cos(q, μ_c) = q·μ_c / (‖q‖ ‖μ_c‖)
    cos = F.normalize(queries.double(), dim=-1) @ F.normalize(means, dim=-1).T
    assert torch.allclose(logits.double(), cos, atol=1e-6)
    assert logits.argmax(-1).tolist() == [1, 0, 2, 0]
    # after task 0 only the first two classes exist
    assert clf.head(TaskHeads(3), 0)(queries).shape == (4, 2)


# ---------------------------------------------------------------- classifier alignment


@pytest.mark.parametrize("minibatch, factor", [("reference", 1), ("batch", 5)])
def test_alignment_takes_c_steps_per_epoch(minibatch, factor):
    """The reference: each epoch's samples_factor × batch samples per class, in mini-batches of that size."""
    classes, dim, epochs = 7, 6, 3
    gauss = ClassGaussians(dim)
    x, y = synthetic([0, classes], dim=dim, per_class=20)
    gauss.add_classes(x, y, list(range(classes)))
    steps = []
    w0, b0 = torch.zeros(classes, dim), torch.zeros(classes)
    align_classifier(w0, b0, gauss, classes, epochs=epochs, batch_size=16, samples_factor=5, minibatch=minibatch,
                     on_step=lambda: steps.append(1))
    assert len(steps) == classes * epochs * factor


def test_alignment_default_through_the_classifier_counts_c_steps():
    offsets = [0, 3, 7]
    cfg = load_config("smoke", ["ca.epochs=4"])
    assert cfg.ca.minibatch == "reference"
    x, y = synthetic(offsets, dim=8)
    clf = create_classifier(cfg, 8, offsets)
    heads = TaskHeads(8)
    heads.add(3)
    heads.add(4)
    steps = []
    clf.on_step = lambda: steps.append(1)
    for t in range(2):
        sel = (y >= offsets[t]) & (y < offsets[t + 1])
        clf.fit_task(t, x[sel], y[sel], list(range(offsets[t], offsets[t + 1])))
        clf.finish_task(t, heads, seed=1)
    assert len(steps) == 7 * 4  # nothing after task 0; after task 1: 7 seen classes × 4 epochs


def test_cached_sampling_matches_the_per_class_formula():
    """The cached stack gives μ + z Lᵀ with the same z as drawn class by class."""
    gauss = ClassGaussians(5)
    x, y = synthetic([0, 4], dim=5)
    gauss.add_classes(x, y, [0, 1, 2, 3])
    s, labels = gauss.sample([0, 1, 2, 3], 6, torch.Generator().manual_seed(2))
    z = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2))
    want = torch.cat([gauss.means[c] + z[c] @ gauss.chols[c].T for c in range(4)])
    assert torch.allclose(s, want, atol=1e-5) and labels.tolist() == [c for c in range(4) for _ in range(6)]
    gauss.add_classes(x, y, [0])  # new statistics drop the cached stack
    assert gauss._stack is None


def test_bad_classifier_config_names_the_key():
    with pytest.raises(ConfigError, match="classifier.kind"):
        load_config("smoke", ["classifier.kind=svm"])
    with pytest.raises(ConfigError, match="classifier.val_fraction"):
        load_config("smoke", ["classifier.val_fraction=1.5"])
    with pytest.raises(ConfigError, match="classifier.lambdas"):
        load_config("smoke", ["classifier.lambdas=[]"])
    with pytest.raises(ConfigError, match="ca.minibatch"):
        load_config("smoke", ["ca.minibatch=tiny"])


# ---------------------------------------------------------------- end to end on the smoke preset

CASES = {  # name: overrides
    "ncm": ["method.name=ncm"],
    "ranpac": ["method.name=ranpac"],
    "ranpac-fsa": ["method.name=ranpac-fsa"],
    "seqlora-ridge": ["method.name=seqlora", "classifier.kind=ridge"],
    "seqlora-ncm": ["method.name=seqlora", "classifier.kind=ncm"],
}
REFERENCE = {"seqlora": ["method.name=seqlora"]}  # the same method with its default classifier (ca)


@pytest.fixture
def smoke_runs(smoke_run):
    """The shared smoke run of a case (fp32 training unless asked otherwise)."""

    def get(case: str, precision: str = "fp32"):
        return smoke_run(*{**CASES, **REFERENCE}[case], precision=precision)

    return get


def eval_batch(run):
    data = prepare_data(run.config, single_task=False)
    x = torch.stack([run.transform(data.eval_images.load(i)) for i in range(len(data.eval_labels))])
    return x, data.eval_labels


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_classifier_run_resume_predict_export(smoke_runs, tmp_path, case, precision):
    out, res = smoke_runs(case, precision)
    kind = "ncm" if case.endswith("ncm") else "ridge"
    assert res["classifier"]["kind"] == kind
    if kind == "ridge":
        assert len(res["classifier"]["lambda_after_task"]) == res["num_tasks"]

    # resume: stopped after task 2's checkpoint, the classifier's statistics come back exactly
    resumed = stopped_run(tmp_path / "resumed", *CASES[case], precision=precision)
    assert run_cli("run", "--resume", resumed, "--quiet") == 0
    again = read_results(resumed)
    for key in ACC_KEYS:
        assert again[key] == res[key], key
    assert again["classifier"] == res["classifier"]

    # predict: the reloaded model, as after every task, gives the reported accuracies
    x, labels = eval_batch(load_run(out))
    for t in range(res["num_tasks"]):
        run = load_run(out, task=t)
        n = res["task_offsets"][t + 1]
        sel = np.nonzero(labels < n)[0]
        with torch.no_grad():
            pred = run.model(x[sel]).argmax(-1).numpy()
        assert 100.0 * float(np.mean(pred == labels[sel])) == pytest.approx(res["acc_curve"][t], abs=1e-6)

    # export: a plain timm model (+ the ridge weights after it) with the same predictions
    weights = export_run(out, tmp_path / "model.safetensors")
    side = json.loads((tmp_path / "model.json").read_text())
    assert side["classifier"]["kind"] == kind and side["num_classes"] == len(res["class_names"])
    load = dict(side["load"])
    load["pretrained_cfg_overlay"] = {**load["pretrained_cfg_overlay"], "file": str(weights)}
    model = timm.create_model(side["timm_model"], **load, **side["timm_kwargs"]).eval()
    with torch.no_grad():
        logits = model(x)
    if "file" in side["classifier"]:
        beta = load_file(str(tmp_path / side["classifier"]["file"]))["weight"]
        assert beta.shape[0] == len(res["class_names"])
        logits = torch.relu(logits) @ beta.T
    assert logits.shape == (len(labels), len(res["class_names"]))
    acc = 100.0 * float(np.mean(logits.argmax(-1).numpy() == labels))
    assert acc == pytest.approx(res["final_acc"], abs=1e-6)


def test_training_free_methods_take_no_training_step(smoke_runs):
    """ncm and ranpac run no epoch; ranpac-fsa trains task 1 only; a ridge head adds no step to a method."""
    for case in ("ncm", "ranpac"):
        out, _ = smoke_runs(case)
        assert not (out / "metrics.csv").exists()  # one row per training epoch: none
    out, _ = smoke_runs("ranpac-fsa")
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("0,")  # task 0, its single epoch (train.epochs=1)
    ca_rows = (smoke_runs("seqlora")[0] / "metrics.csv").read_text()
    for case in ("seqlora-ridge", "seqlora-ncm"):  # the same steps and losses, whatever the classifier
        assert (smoke_runs(case)[0] / "metrics.csv").read_text() == ca_rows


def test_sweep_over_classifiers_and_report(tmp_path):
    """`sr2lora sweep classifier.kind=ca,ncm,ridge` runs one method with each classifier; the report tells them
    apart and its numbers are those of the runs."""
    out = tmp_path / "sweep"
    assert run_cli("sweep", "--preset", "smoke", "--out", out, "--quiet", "classifier.kind=ca,ncm,ridge",
                   "method.name=seqlora", *SMOKE) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    groups = {g["label"]: g for g in report["groups"]}
    assert set(groups) == {"kind=ca", "kind=ncm", "kind=ridge"}
    for kind in ("ca", "ncm", "ridge"):
        res = read_results(out / f"kind={kind}" / "seed1993")
        assert res["classifier"]["kind"] == kind
        assert groups[f"kind={kind}"]["metrics"]["final_acc"]["mean"] == pytest.approx(res["final_acc"])
