"""Small statistics for the theory checks: Pearson, Spearman, a seeded bootstrap CI, and Weyl's bound.

Only numpy (no scipy). Undefined values (fewer than 3 points, a constant variable) are ``None``, never NaN, so
the JSON documents that carry them stay valid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-d of the same length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given their average rank (as scipy.stats.rankdata 'average').

    Vectorised over rows (a bootstrap ranks thousands of resamples, each full of ties): in sorted order every
    member of a run of equal values gets (first + last) / 2 + 1, its run's first and last positions found with
    running maxima and minima."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, axis=-1, kind="stable")
    s = np.take_along_axis(a, order, axis=-1)
    n = a.shape[-1]
    pos = np.broadcast_to(np.arange(n), a.shape)
    differs = s[..., 1:] != s[..., :-1]
    starts = np.concatenate([np.ones(a.shape[:-1] + (1,), bool), differs], axis=-1)  # first of its run
    ends = np.concatenate([differs, np.ones(a.shape[:-1] + (1,), bool)], axis=-1)  # last of its run
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, n - 1), axis=-1), axis=-1), axis=-1)
    out = np.empty(a.shape, dtype=np.float64)
    np.put_along_axis(out, order, (first + last) / 2.0 + 1.0, axis=-1)
    return out


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair (…, n); NaN where a row is constant."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(-1) / den
    r = np.where(den > 1e-300, r, np.nan)
    return np.clip(r, -1.0, 1.0)


def _none(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's correlation coefficient; None with fewer than 3 finite pairs or a constant variable."""
    a, b = _as_pairs(x, y)
    if len(a) < 3:
        return None
    return _none(float(_pearson_rows(a, b)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson of average ranks); None as :func:`pearson`."""
    a, b = _as_pairs(x, y)
    if len(a) < 3:
        return None
    return _none(float(_pearson_rows(rankdata(a), rankdata(b))))


def bootstrap_ci(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float | None]]:
    """Percentile bootstrap CIs of Pearson's and Spearman's coefficient, resampling the pairs with replacement.

    Seeded (``numpy.random.default_rng(seed)``), so the same data and seed give the same interval. Resamples in
    which a variable is constant are left out; [None, None] when fewer than 3 pairs or no usable resample.
    """
    a, b = _as_pairs(x, y)
    empty = {"pearson": [None, None], "spearman": [None, None]}
    if len(a) < 3:
        return empty
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    xa, yb = a[idx], b[idx]
    rp = _pearson_rows(xa, yb)
    rs = _pearson_rows(rankdata(xa), rankdata(yb))
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    out: dict[str, list[float | None]] = {}
    for name, r in (("pearson", rp), ("spearman", rs)):
        r = r[np.isfinite(r)]
        out[name] = [float(v) for v in np.percentile(r, q)] if len(r) else [None, None]
    return out


def correlate(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """{n, pearson, pearson_ci, spearman, spearman_ci, slope, intercept}: coefficients, 95% bootstrap CIs and
    the least-squares line y ≈ slope·x + intercept (None where undefined)."""
    a, b = _as_pairs(x, y)
    ci = bootstrap_ci(a, b, resamples, seed)
    slope = intercept = None
    if len(a) >= 2 and np.ptp(a) > 0:
        s, i = np.polyfit(a, b, 1)
        slope, intercept = float(s), float(i)
    return {"n": int(len(a)), "pearson": pearson(a, b), "pearson_ci": ci["pearson"], "spearman": spearman(a, b),
            "spearman_ci": ci["spearman"], "slope": slope, "intercept": intercept}


def within_group_spearman(x: Sequence[float], y: Sequence[float], groups: Sequence[Any]) -> float | None:
    """Spearman's ρ after removing each group's mean rank from x and y (a partial correlation given the group).

    Used with the group (run, tasks elapsed): whether more drift goes with more margin loss *among pairs with the
    same number of tasks since j*, so that the common growth of both with time does not count. None when
    undefined (fewer than 3 pairs, or nothing varies within the groups).
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    g = np.asarray([str(v) for v in groups])
    keep = np.isfinite(a) & np.isfinite(b)
    a, b, g = a[keep], b[keep], g[keep]
    if len(a) < 3:
        return None
    ra, rb = rankdata(a), rankdata(b)
    for v in np.unique(g):
        m = g == v
        ra[m] -= ra[m].mean()
        rb[m] -= rb[m].mean()
    return _none(float(_pearson_rows(ra, rb)))


# ---------------------------------------------------------------- Weyl's inequality


def weyl_excess(ev_a: np.ndarray, ev_b: np.ndarray, delta_norm: np.ndarray) -> np.ndarray:
    """max_i |λ_i(B) − λ_i(A)| − ‖B − A‖₂ per matrix pair (…,): ≤ 0 where Weyl's bound holds.

    ``ev_a``/``ev_b`` (…, L) must be sorted the same way (both ascending): Weyl pairs the i-th smallest with the
    i-th smallest. Eigenvalues in another order break the bound, which is how the check is shown to be able
    to fail.
    """
    return np.abs(np.asarray(ev_b) - np.asarray(ev_a)).max(-1) - np.asarray(delta_norm)


def weyl_check(r_a: np.ndarray, r_b: np.ndarray, rtol: float = 1e-9) -> dict[str, Any]:
    """Check |λ_i(R_b) − λ_i(R_a)| ≤ ‖R_b − R_a‖₂ for every pair of symmetric matrices (…, L, L), in float64.

    A pair holds when the excess is at most ``rtol`` × max(1, ‖R_a‖₂, ‖R_b‖₂) (float rounding of eigvalsh).
    Returns {checks, holds, fraction, max_excess_rel}: the count, the pairs that hold, their fraction and the
    largest excess relative to that scale (negative: the bound held with room everywhere).
    """
    a = np.asarray(r_a, dtype=np.float64).reshape(-1, *np.shape(r_a)[-2:])
    b = np.asarray(r_b, dtype=np.float64).reshape(-1, *np.shape(r_b)[-2:])
    if len(a) == 0:
        return weyl_summary(np.zeros(0), np.zeros(0), rtol)
    ev_a, ev_b = np.linalg.eigvalsh(a), np.linalg.eigvalsh(b)
    delta = np.abs(np.linalg.eigvalsh(b - a)).max(-1)  # spectral norm of a symmetric matrix
    return weyl_summary(weyl_excess(ev_a, ev_b, delta),
                        np.maximum(1.0, np.maximum(np.abs(ev_a).max(-1), np.abs(ev_b).max(-1))), rtol)


def weyl_summary(excess: np.ndarray, scale: np.ndarray, rtol: float = 1e-9) -> dict[str, Any]:
    """Counts of :func:`weyl_excess` values within tolerance ``rtol`` × ``scale``."""
    excess, scale = np.asarray(excess, dtype=np.float64).ravel(), np.asarray(scale, dtype=np.float64).ravel()
    ok = excess <= rtol * scale
    n = int(len(excess))
    return {"checks": n, "holds": int(ok.sum()), "fraction": float(ok.mean()) if n else None,
            "max_excess_rel": float((excess / scale).max()) if n else None}


def merge_weyl(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool several :func:`weyl_summary` results."""
    parts = [p for p in parts if p["checks"]]
    n = sum(p["checks"] for p in parts)
    h = sum(p["holds"] for p in parts)
    return {"checks": n, "holds": h, "fraction": h / n if n else None,
            "max_excess_rel": max(p["max_excess_rel"] for p in parts) if parts else None}
