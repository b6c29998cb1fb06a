"""Aggregating a group of runs: mean ± sample std over seeds of every metric, of the accuracy curve and matrix,
of per-task forgetting, and each group's gain over ``frozen`` of the same preset."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..runs.folder import RunFolder
from .collect import METRICS, Group

BASELINE = "frozen"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std of a single value is 0."""
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def forgetting_per_task(matrix: Sequence[Sequence[float | None]]) -> list[float]:
    """Per old task j < T: max over t < T of matrix[t][j] minus the final matrix[T][j] (Chaudhry et al.)."""
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)
    k = len(m)
    if k < 2:
        return []
    return [float(np.nanmax(m[: k - 1, j]) - m[k - 1, j]) for j in range(k - 1)]


def _stat(values: Sequence[float]) -> dict[str, Any]:
    mu, sd = mean_std(values)
    return {"mean": mu, "std": sd, "values": [float(v) for v in values]}


def aggregate(group: Group) -> dict[str, Any]:
    """Mean ± std over the group's runs of every metric, of a_t, of the accuracy matrix and of per-task forgetting."""
    res = [r.results for r in group.runs]
    lengths = {len(r["acc_curve"]) for r in res}
    if len(lengths) != 1:
        counts = ", ".join(f"{r.path / RunFolder.RESULTS}: {len(r.results['acc_curve'])}" for r in group.runs)
        raise ValueError(f"{group.full_name}: runs have different numbers of tasks ({counts}); report them "
                         f"separately")
    T = lengths.pop()
    curves = np.array([r["acc_curve"] for r in res], dtype=np.float64)
    mats = np.array([[[np.nan if v is None else v for v in row] for row in r["accuracy_matrix"]] for r in res],
                    dtype=np.float64)
    forg = np.array([forgetting_per_task(r["accuracy_matrix"]) for r in res], dtype=np.float64).reshape(len(res), -1)
    n = len(res)

    def col_stats(a: np.ndarray) -> tuple[list[float], list[float]]:
        mu = a.mean(0)
        sd = a.std(0, ddof=1) if n > 1 else np.zeros_like(mu)
        return [float(x) for x in mu], [float(x) for x in sd]

    cm, cs = col_stats(curves)
    fm, fs = col_stats(forg) if forg.shape[1] else ([], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mat_mean = np.nanmean(mats, axis=0)
    return {
        "name": group.name,
        "preset": group.preset,
        "method": group.method,
        "label": group.label,
        "n": n,
        "planned": n + len(group.missing),
        "missing": [str(p) for p in group.missing],
        "seeds": [r.seed for r in group.runs],
        "runs": [str(r.path) for r in group.runs],
        "num_tasks": T,
        "metrics": {m: _stat([r[m] for r in res]) for m in METRICS},
        "acc_curve": {"mean": cm, "std": cs},
        "forgetting_per_task": {"mean": fm, "std": fs},
        "accuracy_matrix_mean": [[None if math.isnan(v) else float(v) for v in row] for row in mat_mean],
        "gain_over_frozen": None,
    }


def _baseline_for(g: dict[str, Any], aggs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The frozen group to compare with: the only one of the preset, or the one with the same label."""
    cands = [a for a in aggs if a["preset"] == g["preset"] and a["method"] == BASELINE]
    if len(cands) == 1:
        return cands[0]
    same = [a for a in cands if a["label"] == g["label"]]
    return same[0] if len(same) == 1 else None


def add_gains(aggs: list[dict[str, Any]]) -> None:
    """Set ``gain_over_frozen`` (difference of seed means in A_T and Ā) where a frozen group exists."""
    for g in aggs:
        if g["method"] == BASELINE:
            continue
        base = _baseline_for(g, aggs)
        if base is None:
            continue
        g["gain_over_frozen"] = {
            "baseline": base["name"],
            **{m: g["metrics"][m]["mean"] - base["metrics"][m]["mean"] for m in ("final_acc", "avg_acc")},
        }
