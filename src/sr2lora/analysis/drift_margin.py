"""Does drift cost margin? The (old task j, later task t) pairs of one or many drift.json documents, correlated.

For every run, old task j and later task t > j a pair is formed from the drift measures of
:mod:`sr2lora.analysis.drift`: the increase of each drift measure since t = j (``measure(j, t) − measure(j, j)``; the
drifts are 0 at t = j by construction) and the margin decrease ``margin(j, j) − margin(j, t)`` of task j's
held-out sample. Pearson's and Spearman's coefficients with seeded bootstrap CIs (over pairs) are computed per
method and pooled over every run, for each drift measure, so that the relation drift can be compared with the
prototype shift as an explanation of the margin loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .stats import correlate, within_group_spearman

DRIFT_KEYS = ("relation_drift", "relation_drift_rel", "spectrum_drift", "prototype_shift")
PLOTTED = ("relation_drift", "spectrum_drift", "prototype_shift")
TITLES = {"relation_drift": "relation drift ‖ΔR‖_F", "relation_drift_rel": "relative relation drift",
          "spectrum_drift": "spectral drift ‖Δσ‖₂", "prototype_shift": "prototype shift"}
SCHEMA = "sr2lora.drift_margin/1"


def drift_margin_pairs(doc: dict[str, Any], run: str | None = None) -> list[dict[str, Any]]:
    """One row per (j, t > j) of a drift document: drift increases and the margin decrease since t = j."""
    rows = []
    for task in doc.get("tasks", []):
        j = int(task["task"])
        by_t = {int(r["t"]): r for r in task["after"]}
        if j not in by_t:
            continue
        ref = by_t[j]
        for t in sorted(k for k in by_t if k > j):
            r = by_t[t]
            if r.get("margin") is None or ref.get("margin") is None:
                continue
            row: dict[str, Any] = {"run": str(run or doc.get("run") or "run"), "method": doc.get("method") or "?",
                                   "j": j, "t": t, "lag": t - j,
                                   "margin_decrease": float(ref["margin"] - r["margin"])}
            for k in DRIFT_KEYS:
                row[k] = None if r.get(k) is None or ref.get(k) is None else float(r[k] - ref[k])
            rows.append(row)
    return rows


def _correlations(rows: Sequence[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    out = {}
    for k in DRIFT_KEYS:
        sel = [r for r in rows if r[k] is not None]
        x, y = [r[k] for r in sel], [r["margin_decrease"] for r in sel]
        out[k] = correlate(x, y, resamples, seed)
        out[k]["spearman_within_lag"] = within_group_spearman(x, y, [(r["run"], r["lag"]) for r in sel])
    return out


def drift_margin_summary(docs: Sequence[dict[str, Any]], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Pairs, per-method and pooled correlations of every drift increase with the margin decrease, and a
    plain-language reading (see :func:`reading`). Deterministic for a given ``seed``."""
    rows = [p for d in docs for p in drift_margin_pairs(d)]
    methods = sorted({r["method"] for r in rows})
    doc = {
        "schema": SCHEMA,
        "x": "increase of the drift measure since t = j", "y": "margin decrease since t = j",
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "over": "pairs"},
        "runs": sorted({str(r["run"]) for r in rows}),
        "num_pairs": len(rows),
        "pooled": _correlations(rows, resamples, seed),
        "by_method": {m: _correlations([r for r in rows if r["method"] == m], resamples, seed) for m in methods},
        "pairs": rows,
    }
    doc["reading"] = reading(doc)
    return doc


def fmt_correlation(c: dict[str, Any], key: str = "spearman") -> str:
    v, ci = c[key], c[f"{key}_ci"]
    if v is None:
        return "undefined"
    tail = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else ""
    return f"{v:+.2f}{tail}"


def reading(doc: dict[str, Any]) -> str:
    """One paragraph saying, from the numbers, whether more relation drift went with a larger margin loss."""
    n = doc["num_pairs"]
    if n < 3:
        return f"Only {n} (run, j, t > j) pairs: too few to correlate drift with margin loss (train more tasks)."
    pooled = doc["pooled"]
    rel = pooled["relation_drift"]
    parts = [f"Over {n} (run, old task j, later task t) pairs from {len(doc['runs'])} run(s), the margin decrease "
             f"of old tasks has Spearman ρ = {fmt_correlation(rel)} (95% bootstrap CI) with the relation drift "
             f"(Pearson r = {fmt_correlation(rel, 'pearson')})."]
    lo, hi = rel["spearman_ci"] if rel["spearman"] is not None else (None, None)
    if lo is not None and lo > 0:
        parts.append("The paper's first claim, that more inter-layer relation drift goes with smaller margins, "
                     "holds here: the interval lies above zero.")
    elif hi is not None and hi < 0:
        parts.append("This contradicts the paper's first claim: more relation drift went with a smaller margin loss.")
    else:
        parts.append("Whether more relation drift goes with smaller margins is not established here (the "
                     "coefficient is undefined or its interval contains zero).")
    within = rel["spearman_within_lag"]
    if within is not None:
        parts.append(f"Among pairs of the same run with the same number of tasks since j (so that the growth of "
                     f"both with time does not count), ρ = {within:+.2f}.")
    defined = {k: pooled[k]["spearman"] for k in PLOTTED if pooled[k]["spearman"] is not None}
    if len(defined) > 1:
        best = max(defined, key=lambda k: defined[k])
        listed = ", ".join(f"{TITLES[k]} {defined[k]:+.2f}" for k in defined)
        if sum(abs(v - defined[best]) < 0.01 for v in defined.values()) > 1:
            parts.append(f"The drift measures track the margin loss about equally (ρ: {listed}).")
        else:
            parts.append(f"Of the drift measures, {TITLES[best]} tracks the margin loss best (ρ: {listed}).")
    per = []
    for m, cs in doc["by_method"].items():
        c = cs["relation_drift"]
        per.append(f"{m}: ρ = {fmt_correlation(c)} (n = {c['n']})" if c["spearman"] is not None
                   else f"{m}: undefined (n = {c['n']}; the drift does not vary, e.g. a frozen backbone)")
    if per:
        parts.append("Per method, relation drift vs margin decrease: " + "; ".join(per) + ".")
    parts.append("Pairs of one run are not independent, so read the intervals as a description of these runs "
                 "rather than a test.")
    return " ".join(parts)
