"""The report's tables as (header, rows) of strings, rendered as Markdown or HTML by :mod:`.render`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..analysis.drift_margin import PLOTTED, TITLES, fmt_correlation
from ..analysis.robustness import LOSS_TITLES
from .collect import METRICS

METRIC_TITLES = {"final_acc": "A_T", "avg_acc": "Ā", "forgetting": "forgetting", "bwt": "BWT",
                 "plasticity": "plasticity"}


def pm(stat: dict[str, Any]) -> str:
    """``mean ± std`` with two decimals (the format of every table cell)."""
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def summary_table(aggs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the summary table."""
    head = ["group", "preset", "n", *[METRIC_TITLES[m] for m in METRICS], "ΔA_T vs frozen", "ΔĀ vs frozen"]
    rows = []
    for g in aggs:
        gain = g["gain_over_frozen"] or {}
        n = str(g["n"]) if g.get("planned", g["n"]) == g["n"] else f"{g['n']} of {g['planned']}"
        rows.append([g["name"], g["preset"], n, *[pm(g["metrics"][m]) for m in METRICS],
                     _signed(gain.get("final_acc")), _signed(gain.get("avg_acc"))])
    return head, rows


def curve_table(aggs: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a_1..a_T per group (groups of one preset share T)."""
    T = max(g["num_tasks"] for g in aggs)
    head = ["group", *[f"a_{t + 1}" for t in range(T)]]
    rows = []
    for g in aggs:
        c = g["acc_curve"]
        cells = [pm({"mean": m, "std": s}) for m, s in zip(c["mean"], c["std"])]
        rows.append([g["name"], *cells, *[""] * (T - len(cells))])
    return head, rows


# ---------------------------------------------------------------- the analyses


def correlation_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per group (each method, then pooled) and drift measure: n, Pearson, Spearman with CIs."""
    head = ["group", "drift measure", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]", "ρ within lag"]
    rows = []
    groups = list(doc["by_method"].items()) + [("pooled", doc["pooled"])]
    for name, cs in groups:
        for k in PLOTTED:
            c = cs[k]
            w = c.get("spearman_within_lag")
            rows.append([name, TITLES[k], str(c["n"]), fmt_correlation(c, "pearson"), fmt_correlation(c),
                         "undefined" if w is None else f"{w:+.2f}"])
    return head, rows


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)


def robustness_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per setting, for each loss: relative loss change, loss CV, relative gradient variance,
    mean gradient cosine; then the Weyl checks and the spectrum/entry ratio."""
    head = ["perturbation"]
    for n in doc["losses"]:
        head += [f"{LOSS_TITLES.get(n, n)}: Δloss (rel)", "loss CV", "grad var (rel)", "grad cos"]
    head += ["Weyl holds", "‖Δλ‖₂/‖ΔR‖_F"]
    rows = []
    for s in doc["settings"]:
        row = [s["label"]]
        for n in doc["losses"]:
            c = s["losses"][n]
            row += [_num(c["loss_rel_change"]), _num(c["loss_cv"]), _num(c["grad_var_rel"]),
                    _num(c["grad_cos_mean"], ".4f")]
        w = s["weyl"]
        row += [f"{w['holds']}/{w['checks']}", _num(s["spectrum_to_entry_ratio"])]
        rows.append(row)
    return head, rows
