"""Every figure of sr2lora: the report's (accuracy curves, matrices, forgetting, summary) and the analyses' (drift,
drift vs margin, robustness). Drawn from the JSON documents the runs and analyses write, nothing else: no module
outside ``report/`` imports matplotlib (a test checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.drift_margin import PLOTTED, TITLES
from ..analysis.robustness import LOSS_TITLES, setting_of
from .render import pyplot, save_figure
from .tables import METRIC_TITLES

MEASURE_TITLES = {
    "relation_drift": "relation drift ‖R_now − R_then‖_F",
    "spectrum_drift": "spectral drift ‖σ(R_now) − σ(R_then)‖₂",
    "prototype_shift": "prototype shift (normalised class means)",
    "margin": "margin of old samples (true − best other logit)",
}


def _int_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def plot_curves(aggs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy on seen classes after each task: mean line and ±std band per group."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g in aggs:
        x = np.arange(1, len(g["acc_curve"]["mean"]) + 1)
        mu, sd = np.array(g["acc_curve"]["mean"]), np.array(g["acc_curve"]["std"])
        ax.plot(x, mu, marker="o", label=f"{g['name']} (n={g['n']})")
        ax.fill_between(x, mu - sd, mu + sd, alpha=0.2)
    ax.set_xlabel("tasks learned")
    ax.xaxis.set_major_locator(_int_ticks())
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_matrix(g: dict[str, Any], path: Path) -> Path:
    """Heatmap of the mean accuracy matrix (row: after task t, column: task j)."""
    plt = pyplot()
    m = np.array([[np.nan if v is None else v for v in row] for row in g["accuracy_matrix_mean"]])
    T = len(m)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * T, 0.8 + 0.55 * T))
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=100, cmap="viridis")
    if T <= 20:
        for t in range(T):
            for j in range(T):
                if not np.isnan(m[t, j]):
                    ax.text(j, t, f"{m[t, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if m[t, j] < 60 else "black")
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [str(t + 1) for t in range(T)])
    ax.set_xlabel("task j")
    ax.set_ylabel("after task t")
    ax.set_title(f"{g['preset']}/{g['name']} (n={g['n']})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_forgetting(aggs: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Per old task: max earlier accuracy − final accuracy, one bar per group (±std)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    k = max(1, len(aggs))
    width = 0.8 / k
    for i, g in enumerate(aggs):
        mu, sd = g["forgetting_per_task"]["mean"], g["forgetting_per_task"]["std"]
        x = np.arange(1, len(mu) + 1) + (i - (k - 1) / 2) * width
        ax.bar(x, mu, width, yerr=sd, capsize=2, label=g["name"])
    ax.set_xlabel("task j")
    ax.xaxis.set_major_locator(_int_ticks())
    ax.set_ylabel("forgetting (points)")
    ax.set_title(title)
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_summary(aggs: Sequence[dict[str, Any]], path: Path) -> Path:
    """A_T, Ā and forgetting of every group as bars with ±std error bars."""
    plt = pyplot()
    metrics = ("final_acc", "avg_acc", "forgetting")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(aggs) + 3), 4.5))
    k = len(aggs)
    width = 0.8 / max(1, k)
    presets = {g["preset"] for g in aggs}
    for i, g in enumerate(aggs):
        x = np.arange(len(metrics)) + (i - (k - 1) / 2) * width
        label = g["name"] if len(presets) == 1 else f"{g['preset']}/{g['name']}"
        ax.bar(x, [g["metrics"][m]["mean"] for m in metrics], width,
               yerr=[g["metrics"][m]["std"] for m in metrics], capsize=3, label=label)
    ax.set_xticks(range(len(metrics)), [METRIC_TITLES[m] for m in metrics])
    ax.set_ylabel("%")
    ax.set_title("summary (mean ± std over seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ---------------------------------------------------------------- the analyses


def run_label(doc: dict[str, Any], run_dir: str | Path | None = None) -> str:
    """A short legend label: method (and run folder name when given)."""
    name = doc.get("method") or "run"
    return f"{name} ({Path(run_dir).name})" if run_dir else str(name)


def plot_drift(docs: Sequence[tuple[str, dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """Plots of each measure vs the number of tasks learned; one line per run (mean over old tasks j < t).

    With one run, a second figure shows one line per old task j. Returns the written PNG paths.
    """
    plt = pyplot()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(MEASURE_TITLES)
    paths = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, key in zip(axes.flat, keys):
        for label, doc in docs:
            rows = [r for r in doc["summary"] if r[key] is not None]
            ax.plot([r["tasks_learned"] for r in rows], [r[key] for r in rows], marker="o", label=label)
        ax.set_title(MEASURE_TITLES[key], fontsize=10)
        ax.set_xlabel("tasks learned")
        ax.xaxis.set_major_locator(_int_ticks())
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("drift of old tasks (mean over tasks j < t)")
    paths.append(save_figure(fig, out_dir / "drift.png"))
    if len(docs) == 1:
        doc = docs[0][1]
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        for ax, key in zip(axes.flat, keys):
            for task in doc["tasks"]:
                ts = [r["t"] + 1 for r in task["after"]]
                ax.plot(ts, [r[key] for r in task["after"]], marker="o", label=f"task {task['task'] + 1}")
            ax.set_title(MEASURE_TITLES[key], fontsize=10)
            ax.set_xlabel("tasks learned")
            ax.xaxis.set_major_locator(_int_ticks())
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"{docs[0][0]}: drift of each task's sample")
        paths.append(save_figure(fig, out_dir / "drift_per_task.png"))
    return paths


def plot_drift_margin(doc: dict[str, Any], path: str | Path) -> Path:
    """Scatter of margin decrease vs each drift increase, one colour per method with its least-squares line
    (and the pooled line dashed)."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4.2 * len(PLOTTED), 4.0))
    methods = list(doc["by_method"])
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, key in zip(np.atleast_1d(axes), PLOTTED):
        rows = [r for r in doc["pairs"] if r[key] is not None]
        for m in methods:
            sel = [r for r in rows if r["method"] == m]
            if not sel:
                continue
            x = np.array([r[key] for r in sel])
            y = np.array([r["margin_decrease"] for r in sel])
            c = doc["by_method"][m][key]
            rho = "" if c["spearman"] is None else f", ρ={c['spearman']:+.2f}"
            ax.scatter(x, y, s=14, alpha=0.7, color=colours[m], label=f"{m} (n={len(sel)}{rho})")
            if c["slope"] is not None:
                xs = np.linspace(x.min(), x.max(), 2)
                ax.plot(xs, c["slope"] * xs + c["intercept"], color=colours[m], lw=1.2)
        p = doc["pooled"][key]
        if p["slope"] is not None and rows:
            xs = np.linspace(min(r[key] for r in rows), max(r[key] for r in rows), 2)
            rho = "" if p["spearman"] is None else f" (ρ={p['spearman']:+.2f})"
            ax.plot(xs, p["slope"] * xs + p["intercept"], "k--", lw=1, label=f"pooled{rho}")
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_xlabel(f"increase of {TITLES[key]}")
        ax.set_ylabel("margin decrease of old task")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("drift vs margin loss, per (run, old task j, later task t)")
    return save_figure(fig, Path(path))


def plot_robustness(doc: dict[str, Any], path: str | Path) -> Path:
    """Relative gradient variance and gradient cosine against the feature-noise size ε, one line per loss; the
    augmentation and other-batch values as horizontal marks."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    noise = [s for s in doc["settings"] if s["perturbation"] == "noise"]
    eps = [s["value"] for s in noise]
    for i, n in enumerate(doc["losses"]):
        colour = f"C{i}"
        for ax, key in zip(axes, ("grad_var_rel", "grad_cos_mean")):
            ys = [s["losses"][n][key] for s in noise]
            if eps and all(y is not None for y in ys):
                ax.plot(eps, ys, marker="o", color=colour, label=LOSS_TITLES.get(n, n))
            for kind, style in (("augmentation", ":"), ("batch", "--")):
                s = setting_of(doc, kind)
                if s is not None and s["losses"][n][key] is not None:
                    ax.axhline(s["losses"][n][key], color=colour, ls=style, lw=0.9, alpha=0.8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("gradient variance / ‖g_ref‖²")
    axes[1].set_ylabel("cosine(perturbed, unperturbed gradient)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("relative feature noise ε")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, title="lines: noise; dotted: augmentation; dashed: other batch", title_fontsize=7)
    t = doc["pair"]["task"]
    fig.suptitle(f"{doc['method']}: robustness of the alignment losses (tasks {t - 1} → {t})")
    return save_figure(fig, Path(path))
