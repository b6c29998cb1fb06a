"""Reports across runs: seeds aggregated per (preset, method, setting), tables, figures; and TensorBoard logs.

``sr2lora report RUN_DIR... --out DIR`` finds every run folder (a folder with ``results.json``, searched
recursively), groups runs by (preset, method) and, where runs of one (preset, method) differ in config keys other
than the seed, by a short label of the differing keys (``rank=4, weight=0.5``). Each group's metrics are
aggregated over its seeds as mean ± sample standard deviation (n − 1; 0 for a single run). Written into DIR:

- ``report.md`` / ``report.html``: summary table (A_T, Ā, forgetting, BWT, plasticity, gain over ``frozen`` of the
  same preset), per-task accuracy a_1..a_T, figures (embedded in the HTML);
- ``report.json``: the aggregated numbers;
- PNGs: accuracy curves per preset (mean with a ±std band), one accuracy-matrix heatmap per group (mean over
  seeds), forgetting per task (max earlier accuracy − final accuracy) and a summary bar chart.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import RUNTIME_KEYS, flatten
from ..core.atomic import atomic_write_json, atomic_write_text
from ..runs.folder import discover_runs
from .render import html_table, md_table, pyplot, save_figure

METRICS = ("final_acc", "avg_acc", "forgetting", "bwt", "plasticity")
METRIC_TITLES = {"final_acc": "A_T", "avg_acc": "Ā", "forgetting": "forgetting", "bwt": "BWT",
                 "plasticity": "plasticity"}
# Config keys that never define a group: the seed, labels, where/how fast a run computes, the analysis.
IGNORED_KEYS = {"seed", "preset", "description", *RUNTIME_KEYS}
IGNORED_PREFIXES = ("analysis.",)
BASELINE = "frozen"


# ---------------------------------------------------------------- TensorBoard (used by the engine)


# ---------------------------------------------------------------- loading and grouping


@dataclass
class Run:
    """One finished run: its folder, results.json and flattened config.yaml (empty when absent)."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.results.get("method") or self.config.get("method.name") or "?")

    @property
    def preset(self) -> str:
        return str(self.results.get("preset") or self.config.get("preset") or "custom")

    @property
    def seed(self) -> Any:
        return self.results.get("seed", self.config.get("seed"))


RESULT_KEYS = ("acc_curve", "accuracy_matrix")  # what aggregation reads besides METRICS


def read_results_file(file: Path) -> dict[str, Any]:
    """A run's results.json as a dict; ValueError naming the file when it is truncated, not an object, or lacks
    a key the report needs (the CLI prints it as an error, not a traceback)."""
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc}); the file is truncated or damaged, rerun or remove "
                         f"that run") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read it ({exc})") from exc
    if not isinstance(results, dict):
        raise ValueError(f"{file}: expected a JSON object (a sr2lora results.json), got a {type(results).__name__}")
    missing = [k for k in (*RESULT_KEYS, *METRICS) if k not in results]
    if missing:
        raise ValueError(f"{file}: not a sr2lora results.json (lacks {', '.join(missing)})")
    return results


def load_run(path: str | Path) -> Run:
    """Read a run folder's results.json and config.yaml."""
    path = Path(path)
    results = read_results_file(path / "results.json")
    cfg_file = path / "config.yaml"
    config = flatten(yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}) if cfg_file.is_file() else {}
    if "precision" in results:  # `auto` means bf16 on one machine and fp32 on another: group by what ran
        config["train.precision"] = results["precision"]
        # runs from before evaluation was float32 evaluated in their training precision: never pooled with newer ones
        config["eval_precision"] = results.get("eval_precision", results["precision"])
    return Run(path, results, config)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (seed and run-location keys excluded) whose value is not the same in all ``runs``."""
    keys = sorted({k for r in runs for k in r.config})
    out = []
    for k in keys:
        if _ignored(k):
            continue
        vals = {json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}
        if len(vals) > 1:
            out.append(k)
    return out


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's last part, or the whole key when two keys share the last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def setting_label(run: Run, keys: Sequence[str]) -> str:
    """``rank=4, weight=0.5``: the run's values of the keys that vary within its (preset, method)."""
    short = short_keys(keys)
    return ", ".join(f"{short[k]}={_fmt_value(run.config.get(k))}" for k in keys)


@dataclass
class Group:
    """Runs of one (preset, method, setting) — typically several seeds of one configuration."""

    preset: str
    method: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.method} [{self.label}]" if self.label else self.method

    @property
    def full_name(self) -> str:
        return f"{self.preset}/{self.name}"

    @property
    def slug(self) -> str:
        return _slug(f"{self.preset}_{self.method}_{self.label}")


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Group by (preset, method), then by the label of the config keys that differ inside that pair."""
    by_pm: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        by_pm.setdefault((r.preset, r.method), []).append(r)
    groups: list[Group] = []
    for (preset, method), rs in sorted(by_pm.items()):
        keys = differing_keys(rs)
        by_label: dict[str, Group] = {}
        for r in rs:
            label = setting_label(r, keys)
            by_label.setdefault(label, Group(preset, method, label)).runs.append(r)
        groups.extend(by_label[k] for k in sorted(by_label))
    for g in groups:
        g.runs.sort(key=lambda r: (str(r.seed), str(r.path)))
    return groups


# ---------------------------------------------------------------- aggregation


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
        raise ValueError(f"{group.full_name}: runs have different numbers of tasks ({sorted(lengths)})")
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


# ---------------------------------------------------------------- tables


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
        rows.append([g["name"], g["preset"], str(g["n"]), *[pm(g["metrics"][m]) for m in METRICS],
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


# ---------------------------------------------------------------- figures


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


# ---------------------------------------------------------------- the report


SLUG_MAX = 120  # file-name part length kept; longer names (many differing keys) end in a hash instead


def _short(slug: str) -> str:
    """``slug`` cut to SLUG_MAX characters plus a hash of the whole, so file names stay under the OS limit."""
    if len(slug) <= SLUG_MAX:
        return slug
    import hashlib

    return f"{slug[:SLUG_MAX]}-{hashlib.sha256(slug.encode('utf-8')).hexdigest()[:12]}"


def _slug(s: str) -> str:
    return _short(re.sub(r"[^A-Za-z0-9._=+-]+", "_", s).strip("_") or "x")


def build_report(paths: Iterable[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Discover, group and aggregate runs; write report.md, report.html, report.json and the PNGs into ``out_dir``.

    Returns report.json's content. Raises FileNotFoundError when no run is found.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in discover_runs(paths)]
    groups = group_runs(runs)
    aggs = [aggregate(g) for g in groups]
    for a, g in zip(aggs, groups):
        a["slug"] = g.slug
    add_gains(aggs)
    presets = sorted({a["preset"] for a in aggs})
    figures: list[tuple[str, Path]] = []
    for p in presets:
        sel = [a for a in aggs if a["preset"] == p]
        figures.append((f"{p}: accuracy on seen classes", plot_curves(sel, out_dir / f"acc_curve_{_slug(p)}.png",
                                                                      f"{p}: accuracy after each task")))
        figures.append((f"{p}: forgetting per task",
                        plot_forgetting(sel, out_dir / f"forgetting_{_slug(p)}.png", f"{p}: forgetting per task")))
    figures.append(("summary", plot_summary(aggs, out_dir / "summary.png")))
    for a in aggs:
        figures.append((f"{a['preset']}/{a['name']}: accuracy matrix",
                        plot_matrix(a, out_dir / f"matrix_{a['slug']}.png")))
    from .theory import theory_section  # drift vs margin, robustness: when the runs hold their inputs

    theory, theory_figures = theory_section([r.path for r in runs], out_dir)
    doc = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "num_runs": len(runs),
        "format": "mean ± sample std (n-1) over seeds; gains are differences of means",
        "groups": aggs,
        "figures": [p.name for _, p in figures] + [p.name for p in theory_figures],
        "theory": theory,
    }
    # NaN (an undefined mean) is written as null: a report.json must stay valid JSON
    atomic_write_json(out_dir / "report.json", doc)
    _write_md(doc, presets, figures, out_dir / "report.md")
    _write_html(doc, presets, figures, out_dir / "report.html")
    return doc


def _intro(doc: dict[str, Any]) -> str:
    return (f"{doc['num_runs']} runs in {len(doc['groups'])} groups; {doc['format']}. A_T: final accuracy, "
            f"Ā: average incremental accuracy, forgetting and BWT over old tasks, plasticity: accuracy on each "
            f"task right after learning it (all in %).")


def _write_md(doc: dict[str, Any], presets: list[str], figures: list[tuple[str, Path]], path: Path) -> None:
    aggs = doc["groups"]
    parts = ["# sr2lora report", "", _intro(doc), "", "## Summary", "", md_table(*summary_table(aggs)), ""]
    for p in presets:
        parts += [f"## {p}: accuracy on seen classes after each task", "",
                  md_table(*curve_table([a for a in aggs if a["preset"] == p])), ""]
    parts += ["## Runs", ""]
    for a in aggs:
        parts.append(f"- **{a['preset']}/{a['name']}** (seeds {', '.join(map(str, a['seeds']))}): "
                     + ", ".join(f"`{r}`" for r in a["runs"]))
    from .theory import theory_markdown

    parts += ["", *theory_markdown(doc.get("theory")), "## Figures", ""]
    parts += [f"![{t}]({p.name})\n" for t, p in figures]
    atomic_write_text(path, "\n".join(parts) + "\n")


def _write_html(doc: dict[str, Any], presets: list[str], figures: list[tuple[str, Path]], path: Path) -> None:
    aggs = doc["groups"]
    body = [f"<h1>sr2lora report</h1><p>{html.escape(_intro(doc))}</p>", "<h2>Summary</h2>",
            html_table(*summary_table(aggs))]
    for p in presets:
        body += [f"<h2>{html.escape(p)}: accuracy on seen classes after each task</h2>",
                 html_table(*curve_table([a for a in aggs if a["preset"] == p]))]
    body.append("<h2>Runs</h2><ul>")
    for a in aggs:
        body.append(f"<li><b>{html.escape(a['preset'] + '/' + a['name'])}</b>: "
                    + ", ".join(f"<code>{html.escape(r)}</code>" for r in a["runs"]) + "</li>")
    from .theory import theory_html

    body += ["</ul>", *theory_html(doc.get("theory"), path.parent), "<h2>Figures</h2>"]
    for title, p in figures:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        body.append(f"<figure><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{data}\">"
                    f"<figcaption>{html.escape(title)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}figure{display:inline-block;margin:1em}")
    atomic_write_text(path, f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>sr2lora report</title>"
                      f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(paths: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """:func:`build_report`, returning the paths of the files written (report.md/.html/.json and the PNGs)."""
    out_dir = Path(out_dir)
    doc = build_report(paths, out_dir)
    return [out_dir / n for n in ("report.md", "report.html", "report.json")] + [out_dir / f for f in doc["figures"]]
