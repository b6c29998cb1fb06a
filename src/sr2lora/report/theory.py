"""The report's theory checks: drift vs margin (from drift.json) and robustness (from robustness.json).

Both appear in ``sr2lora report`` only when the run folders hold those files (written by ``sr2lora analyze``
and ``sr2lora analyze --robustness``); each comes with a table, a figure and a paragraph generated from the
numbers. The drift–margin correlations pool every reported run that has a drift.json.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis.drift_margin import drift_margin_summary
from ..runs.folder import RunFolder
from .figures import plot_drift_margin, plot_robustness
from .render import html_table, md_table
from .tables import correlation_table, robustness_table

DRIFT_FIGURE = "drift_margin.png"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _figure_name(run: Path) -> str:
    return "robustness_" + (re.sub(r"[^A-Za-z0-9._=+-]+", "_", run.name).strip("_") or "run")[:60] + ".png"


def theory_section(run_paths: Sequence[Path], out_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    """(report.json's ``theory`` part, figure paths written into ``out_dir``); empty when no run has the inputs."""
    theory: dict[str, Any] = {}
    figures: list[Path] = []
    drift = []
    for p in run_paths:
        doc = _read(RunFolder(p).drift_file)
        if doc is not None and doc.get("tasks"):
            drift.append({**doc, "run": str(p)})
    if drift:
        dm = drift_margin_summary(drift)
        figures.append(plot_drift_margin(dm, out_dir / DRIFT_FIGURE))
        theory["drift_margin"] = {**dm, "figure": DRIFT_FIGURE}
    rob = []
    used: set[str] = set()
    for p in run_paths:
        doc = _read(RunFolder(p).robustness_file)
        if doc is None or not doc.get("settings"):
            continue
        name = _figure_name(Path(p))
        while name in used:  # two runs with the same folder name
            name = name[:-4] + "_.png"
        used.add(name)
        figures.append(plot_robustness(doc, out_dir / name))
        rob.append({**doc, "figure": name})
    if rob:
        theory["robustness"] = rob
    return theory, figures


def theory_markdown(theory: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the theory sections (none when ``theory`` is empty)."""
    if not theory:
        return []
    parts: list[str] = []
    dm = theory.get("drift_margin")
    if dm:
        parts += ["## Does relation drift cost margin?", "", dm["reading"], "",
                  md_table(*correlation_table(dm)), "", f"![drift vs margin]({dm['figure']})", ""]
    for doc in theory.get("robustness", []):
        parts += [f"## Robustness of the alignment losses: `{doc['run']}`", "", doc["reading"], "",
                  md_table(*robustness_table(doc)), "", f"![robustness]({doc['figure']})", ""]
    return parts


def theory_html(theory: dict[str, Any] | None, out_dir: Path) -> list[str]:
    """HTML fragments of the theory sections, figures embedded from ``out_dir``."""
    if not theory:
        return []
    def img(name: str, title: str) -> str:
        data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
        return f"<figure><img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,{data}\"></figure>"

    body: list[str] = []
    dm = theory.get("drift_margin")
    if dm:
        body += ["<h2>Does relation drift cost margin?</h2>", f"<p>{html.escape(dm['reading'])}</p>",
                 html_table(*correlation_table(dm)), img(dm["figure"], "drift vs margin")]
    for doc in theory.get("robustness", []):
        body += [f"<h2>Robustness of the alignment losses: <code>{html.escape(doc['run'])}</code></h2>",
                 f"<p>{html.escape(doc['reading'])}</p>", html_table(*robustness_table(doc)),
                 img(doc["figure"], "robustness")]
    return body
