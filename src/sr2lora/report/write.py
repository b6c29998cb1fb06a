"""Writing a report across runs: ``report.md``, a self-contained ``report.html``, ``report.json`` and the figures.

``sr2lora report RUN_DIR... --out DIR`` finds every finished run folder (searched recursively), groups and
aggregates them (:mod:`.collect`, :mod:`.aggregate`): summary table (A_T, Ā, forgetting, BWT, plasticity, gain
over ``frozen`` of the same preset), per-task accuracy a_1..a_T, figures (accuracy curves with a ±std band, one
accuracy-matrix heatmap per group, forgetting per task, a summary chart; :mod:`.figures`) and, when the runs hold
their inputs, the theory checks (:mod:`.theory`). Every file is written atomically.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import html
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..config import RunConfig, flatten
from ..core.atomic import atomic_write_json, atomic_write_text, leftover_temps, move_into
from ..runs.folder import discover_runs
from .aggregate import add_gains, aggregate
from .collect import group_runs, match_missing, read_run_result, slug
from .figures import plot_curves, plot_forgetting, plot_matrix, plot_summary
from .render import html_table, md_table
from .tables import curve_table, summary_table

MISSING_NOTE = ("planned but not finished (failed, running or not started); the groups' means use only their "
                "finished seeds, as the n column says")


def build_report(paths: Iterable[str | Path], out_dir: str | Path,
                 missing: Sequence[tuple[Path, RunConfig]] = ()) -> dict[str, Any]:
    """Discover, group and aggregate runs; write report.md, report.html, report.json and the PNGs into ``out_dir``.

    ``missing``: planned runs (folder, config) that have not finished (a sweep's unfinished cells): each group
    says how many of its planned seeds it averages ("2 of 3") and the report lists the missing runs, so fewer
    seeds are never averaged silently. Returns report.json's content. Raises FileNotFoundError when no run is
    found.
    """
    out_dir = Path(out_dir)
    runs = [read_run_result(p) for p in discover_runs(paths)]  # first: a mistyped run path creates nothing
    out_dir.mkdir(parents=True, exist_ok=True)
    with _writing(out_dir):
        read = {r.path: r for r in runs}  # look again: a run may have finished meanwhile (read only those)
        runs = [read.get(p) or read_run_result(p) for p in discover_runs(paths)]
        found = {Path(r.path).resolve() for r in runs}
        missing = [(f, c) for f, c in missing if Path(f).resolve() not in found]
        for stale in leftover_temps(out_dir):  # of a report killed while it was written
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        # every file is written into a hidden folder first and moved in when all are written: a failure (a full
        # disk) leaves the previous report as it was, never old and new files mixed
        staging = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=out_dir))
        try:
            doc = _build(runs, staging, missing)
            move_into(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return doc


REPORT_LOCK = ".report.lock"


@contextlib.contextmanager
def _writing(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` while a report is written there: two sweeps over one folder end
    with one report each in turn, and neither removes the other's files in progress as stale."""
    with open(out_dir / REPORT_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(runs: list, out_dir: Path, missing: Sequence[tuple[Path, RunConfig]]) -> dict[str, Any]:
    """Group, aggregate and write every file of the report into ``out_dir``; returns report.json's content."""
    groups = group_runs(runs)
    unmatched = match_missing(groups, [(Path(f), flatten(cfg.to_dict())) for f, cfg in missing])
    aggs = [aggregate(g) for g in groups]
    for a, g in zip(aggs, groups):
        a["slug"] = g.slug
    add_gains(aggs)
    presets = sorted({a["preset"] for a in aggs})
    figures: list[tuple[str, Path]] = []
    for p in presets:
        sel = [a for a in aggs if a["preset"] == p]
        figures.append((f"{p}: accuracy on seen classes", plot_curves(sel, out_dir / f"acc_curve_{slug(p)}.png",
                                                                      f"{p}: accuracy after each task")))
        figures.append((f"{p}: forgetting per task",
                        plot_forgetting(sel, out_dir / f"forgetting_{slug(p)}.png", f"{p}: forgetting per task")))
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
        "missing": [str(p) for g in groups for p in g.missing] + [str(p) for p in unmatched],
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
    if doc["missing"]:
        parts += ["", "## Missing runs", "", f"{MISSING_NOTE}:", "", *[f"- `{m}`" for m in doc["missing"]]]
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
    body.append("</ul>")
    if doc["missing"]:
        body += [f"<h2>Missing runs</h2><p>{html.escape(MISSING_NOTE)}:</p><ul>",
                 *[f"<li><code>{html.escape(m)}</code></li>" for m in doc["missing"]], "</ul>"]
    from .theory import theory_html

    body += [*theory_html(doc.get("theory"), path.parent), "<h2>Figures</h2>"]
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
