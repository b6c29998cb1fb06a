"""The theory checks: statistics helpers, known-answer losses under rotations, Weyl's bound, drift vs margin,
and `sr2lora analyze --robustness` (deterministic JSON) on a smoke run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from sr2lora.analysis.drift_margin import drift_margin_pairs, drift_margin_summary
from sr2lora.analysis.robustness import Setting, measure
from sr2lora.analysis.stats import (
    bootstrap_ci,
    correlate,
    pearson,
    rankdata,
    spearman,
    weyl_check,
    weyl_excess,
    weyl_summary,
    within_group_spearman,
)
from sr2lora.methods.losses import (
    batch_spectral_relation_loss,
    entrywise_relation_loss,
    spectral_relation_loss,
)

# ---------------------------------------------------------------- correlations


def test_correlations_are_plus_minus_one_on_monotone_data():
    x = np.linspace(0.1, 3.0, 25)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0, abs=1e-12)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0, abs=1e-12)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-12)
    assert pearson(x, -0.5 * x) == pytest.approx(-1.0, abs=1e-12)
    assert 0.5 < pearson(x, np.exp(x)) < 0.99  # monotone but not linear: Pearson below 1, Spearman exactly 1
    c = correlate(x, 3 * x - 2, resamples=300, seed=1)
    assert c["spearman_ci"] == pytest.approx([1.0, 1.0]) and c["pearson_ci"] == pytest.approx([1.0, 1.0])
    assert c["slope"] == pytest.approx(3.0) and c["intercept"] == pytest.approx(-2.0) and c["n"] == 25


def test_ranks_ties_undefined_and_seeded_bootstrap():
    assert rankdata(np.array([3.0, 1.0, 1.0, 2.0])).tolist() == [4.0, 1.5, 1.5, 3.0]
    assert rankdata(np.array([[2.0, 2.0, 2.0], [1.0, 3.0, 2.0]])).tolist() == [[2.0, 2.0, 2.0], [1.0, 3.0, 2.0]]
    assert pearson([1, 1, 1, 1], [1, 2, 3, 4]) is None and spearman([1, 2], [2, 1]) is None
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    a, b = bootstrap_ci(x, y, 500, seed=7), bootstrap_ci(x, y, 500, seed=7)
    assert a == b and bootstrap_ci(x, y, 500, seed=8) != a
    lo, hi = a["spearman"]
    assert lo < spearman(x, y) < hi and 0 < lo and hi < 1


def test_within_lag_spearman_removes_the_common_growth_with_time():
    g = np.repeat([1, 2, 3, 4], 5)
    i = np.tile(np.arange(5), 4)
    x = 10.0 * g + i
    # both grow with the group (time since j), but inside each group y falls as x rises
    y = 10.0 * g - i
    assert spearman(x, y) > 0.8
    assert within_group_spearman(x, y, g) == pytest.approx(-1.0)
    assert within_group_spearman(x, 10.0 * g + 2 * i, g) == pytest.approx(1.0)
    assert within_group_spearman(x, 10.0 * g, g) is None  # nothing varies within the groups


def _drift_doc(method: str, margins: dict, drifts: dict) -> dict:
    tasks = []
    for j in sorted({j for j, _ in margins}):
        after = [{"t": t, "margin": margins[(j, t)], "relation_drift": drifts[(j, t)],
                  "relation_drift_rel": drifts[(j, t)] / 10, "spectrum_drift": drifts[(j, t)] ** 2,
                  "prototype_shift": 1.0} for (jj, t) in sorted(margins) if jj == j]
        tasks.append({"task": j, "after": after})
    return {"method": method, "tasks": tasks}


def test_drift_margin_pairs_and_correlations():
    T = 4
    pairs = [(j, t) for j in range(T) for t in range(j, T)]
    drifts = {(j, t): 0.0 if t == j else (t - j) * (1 + 0.1 * j) for j, t in pairs}
    margins = {(j, t): 5.0 - 0.2 * j - (0 if t == j else 2 * drifts[(j, t)] ** 0.5) for j, t in pairs}
    doc = _drift_doc("sr2lora", margins, drifts)
    rows = drift_margin_pairs(doc, "r1")
    assert len(rows) == T * (T - 1) // 2
    r = next(r for r in rows if r["j"] == 1 and r["t"] == 3)
    assert r["relation_drift"] == pytest.approx(2 * 1.1) and r["lag"] == 2
    assert r["margin_decrease"] == pytest.approx(2 * (2 * 1.1) ** 0.5)  # margin(j, j) − margin(j, t)
    flat = _drift_doc("frozen", {k: 5.0 - k[1] for k in pairs}, {k: 0.0 for k in pairs})
    dm = drift_margin_summary([{**doc, "run": "r1"}, {**flat, "run": "r2"}], resamples=200, seed=0)
    assert dm["num_pairs"] == 2 * len(rows)
    # margin decrease is a strictly increasing function of the drift: Spearman +1 within the method
    assert dm["by_method"]["sr2lora"]["relation_drift"]["spearman"] == pytest.approx(1.0)
    assert dm["by_method"]["sr2lora"]["spectrum_drift"]["spearman"] == pytest.approx(1.0)
    # no drift variation (frozen backbone) or a constant prototype shift: undefined, never NaN
    assert dm["by_method"]["frozen"]["relation_drift"]["spearman"] is None
    assert dm["pooled"]["prototype_shift"]["spearman"] is None
    assert "holds here" in drift_margin_summary([doc], 200)["reading"]
    json.dumps(dm, allow_nan=False)  # valid JSON
    assert drift_margin_summary([{**doc, "run": "r1"}], 200, 3) == drift_margin_summary([{**doc, "run": "r1"}], 200, 3)


# ---------------------------------------------------------------- rotations: spectral invariant, entries not


def _diag_features(d: list[float], dim: int = 8) -> torch.Tensor:
    """H (1, L, dim) with orthogonal rows of squared norms d: R = H Hᵀ = diag(d)."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return (torch.tensor(d, dtype=torch.float64).sqrt()[:, None] * q[: len(d)])[None].float()


def test_layer_rotation_changes_spectral_loss_by_zero_and_entrywise_by_the_stated_amount():
    a, b = 12.0, 2.0
    h = _diag_features([a, b, 5.0, 1.0])  # R = diag(12, 2, 5, 1), L = 4
    th = math.pi / 6
    c, s = math.cos(th), math.sin(th)
    p = torch.eye(4)
    p[:2, :2] = torch.tensor([[c, -s], [s, c]])
    rotated = p @ h  # mixes layers 0 and 1: R → P R Pᵀ, the same eigenvalues
    assert spectral_relation_loss(rotated, h).item() == pytest.approx(0.0, abs=1e-5)
    assert batch_spectral_relation_loss(rotated, h).item() == pytest.approx(0.0, abs=1e-5)
    # P R Pᵀ − R is nonzero only in the 2×2 block: diagonal ∓(a − b) s², off-diagonal (a − b) c s (twice).
    # Smooth-L1 (β = 1) of |x| ≥ 1 is |x| − 1/2; the mean runs over the L² = 16 entries.
    expected = (2 * ((a - b) * s * s - 0.5) + 2 * ((a - b) * c * s - 0.5)) / 16
    assert entrywise_relation_loss(rotated, h).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.72877, abs=1e-5)
    # a rotation on the feature side (H → H Q) leaves R itself unchanged: both losses are zero
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    hr = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    assert spectral_relation_loss(hr @ q, hr).item() == pytest.approx(0.0, abs=1e-5)
    assert entrywise_relation_loss(hr @ q, hr).item() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- Weyl's inequality


def test_weyl_holds_on_random_symmetric_matrices_and_fails_on_a_wrong_eigenvalue_order():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6, 6))
    a = a + a.transpose(0, 2, 1)
    e = rng.normal(size=(300, 6, 6)) * rng.uniform(1e-3, 3, size=(300, 1, 1))
    e = e + e.transpose(0, 2, 1)
    w = weyl_check(a, a + e)
    assert w["checks"] == 300 and w["holds"] == 300 and w["fraction"] == 1.0 and w["max_excess_rel"] <= 0
    # the check can fail: eigenvalues of one side in descending order, under a small perturbation
    small = 1e-3 * e
    ev_a, ev_b = np.linalg.eigvalsh(a), np.linalg.eigvalsh(a + small)
    norm = np.abs(np.linalg.eigvalsh(small)).max(-1)
    assert (weyl_excess(ev_a, ev_b, norm) <= 1e-9).all()
    wrong = weyl_summary(weyl_excess(ev_a, ev_b[:, ::-1], norm), np.abs(ev_a).max(-1))
    assert wrong["holds"] == 0 and wrong["fraction"] == 0.0 and wrong["max_excess_rel"] > 0.1


# ---------------------------------------------------------------- the measurement on synthetic features


def test_measure_known_answers():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.eye(6) + 0.1 * torch.randn(6, 6, generator=g))
    base = torch.randn(8, 4, 6, generator=g)
    old = base.detach()
    new = base @ w  # a "current model" whose features depend on w
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    rows = np.arange(8)
    same = Setting("noise", 0.0, lambda k, grad: (new if grad else new.detach(), old, rows))
    rotate = Setting("noise", 1.0, lambda k, grad: (q @ (new if grad else new.detach()), q @ old, rows))
    out = measure((new, old), [w], [same, rotate], draws=3, grad_draws=2)
    s0 = out["settings"][0]["losses"]
    for name in ("sr2lora", "spectral-batch", "entrywise"):
        # re-drawing exactly the reference: no loss variation (float rounding: eigh with and without autograd),
        # no gradient variance, cosine 1
        assert s0[name]["loss_cv"] == pytest.approx(0.0, abs=1e-6) and s0[name]["grad_var"] == pytest.approx(0.0)
        assert s0[name]["grad_cos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert out["settings"][0]["weyl"]["checks"] == 0  # nothing perturbed, nothing to check
    s1 = out["settings"][1]
    # the same layer rotation on both sides: eigenvalues unchanged, entries of R_new − R_old rotated
    assert s1["losses"]["sr2lora"]["loss_rel_change"] == pytest.approx(0.0, abs=1e-4)
    ref = F.smooth_l1_loss(new @ new.transpose(1, 2), old @ old.transpose(1, 2)).item()
    moved = F.smooth_l1_loss(q @ new @ new.transpose(1, 2) @ q.T, q @ old @ old.transpose(1, 2) @ q.T).item()
    assert s1["losses"]["entrywise"]["loss_mean"] == pytest.approx(moved, rel=1e-4) and abs(moved - ref) > 1e-4
    assert s1["weyl"]["fraction"] == 1.0 and s1["weyl"]["checks"] == 3 * (8 + 8 + 1 + 1)
    assert s1["spectrum_to_entry_ratio"] == pytest.approx(0.0, abs=1e-4)  # eigenvalues did not move


# ---------------------------------------------------------------- the CLI on a smoke run


@pytest.fixture
def theory_run(smoke_run) -> Path:
    """The shared smoke run with a first task of 12 classes, on the CPU (read-only)."""
    return smoke_run("scenario.init_cls=12", "train.device=cpu")[0]


def test_robustness_cli_is_deterministic(theory_run, tmp_path):
    args = ["analyze", theory_run, "--robustness", "--draws", "3", "--grad-draws", "2", "--batch-size", "6",
            "--eps", "0.05,0.2", "--batch-sizes", "3", "--device", "cpu", "--out", tmp_path]
    assert run_cli(*args) == 0
    first = (theory_run / "robustness.json").read_bytes()
    assert run_cli(*args) == 0
    assert (theory_run / "robustness.json").read_bytes() == first  # the same command, the same JSON
    doc = json.loads(first)
    assert doc["schema"] == "sr2lora.robustness/1" and doc["pair"]["task"] == 2 and doc["batch_size"] == 6
    assert [s["label"] for s in doc["settings"]] == ["augmentation re-drawn", "another batch",
                                                     "feature noise ε=0.05", "feature noise ε=0.2", "batch size 3"]
    assert doc["weyl"]["checks"] > 0 and doc["weyl"]["fraction"] == 1.0
    for s in doc["settings"]:
        for name in ("sr2lora", "spectral-batch", "entrywise"):
            c = s["losses"][name]
            assert c["grad_draws"] == 2 and c["grad_var"] > 0 and -1 <= c["grad_cos_mean"] <= 1
    assert (tmp_path / "robustness_run.png").is_file() and "Weyl's bound held" in doc["reading"]
    assert run_cli("analyze", theory_run, "--robustness", "--task", "0") == 2  # no previous model: clear error
    assert run_cli("analyze", theory_run, "--robustness", "--draws", "1") == 2


def test_analyze_and_report_show_the_theory_checks(theory_run, tmp_path):
    from sr2lora.report import build_report

    assert run_cli("analyze", theory_run, "--samples", "8", "--device", "cpu", "--out", tmp_path / "a") == 0
    drift = json.loads((theory_run / "drift.json").read_text())
    assert drift["drift_margin"]["num_pairs"] == 3  # 3 tasks: (0,1), (0,2), (1,2)
    assert (tmp_path / "a" / "drift_margin.png").is_file() and (tmp_path / "a" / "drift_margin.json").is_file()
    if not (theory_run / "robustness.json").is_file():
        assert run_cli("analyze", theory_run, "--robustness", "--draws", "2", "--grad-draws", "1",
                       "--batch-size", "4", "--eps", "0.1", "--device", "cpu") == 0
    doc = build_report([theory_run], tmp_path / "report")
    theory = doc["theory"]
    assert theory["drift_margin"]["num_pairs"] == 3 and len(theory["robustness"]) == 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Does relation drift cost margin?" in md and "Robustness of the alignment losses" in md
    assert "drift_margin.png" in doc["figures"] and (tmp_path / "report" / "drift_margin.png").is_file()
    assert "Weyl holds" in (tmp_path / "report" / "report.html").read_text()
