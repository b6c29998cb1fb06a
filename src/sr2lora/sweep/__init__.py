"""`sr2lora sweep`: a grid of runs, fanned out on a launcher, and its report.

The grid (:mod:`.grid`) is ``key=v1,v2`` axes × seeds over one preset, or the paper's grid (``--grid paper``).
Each cell is one idempotent ``sr2lora run --continue`` into its own run folder, so the same sweep command given
again skips finished cells and resumes interrupted ones. The launcher (:mod:`.launchers`) runs the cells one after
another here, N at a time on this machine, or as SLURM jobs; ``OUT/sweep.json`` (:mod:`.record`) keeps every
attempt, and ``sr2lora sweep --status OUT`` (:mod:`.status`) tells where each cell stands. At the end the report
covers the finished cells and names the missing ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runs.folder import RunFolder
from .grid import (
    Cell,
    parse_items,
    parse_list,
    parse_seeds,
    plan_paper_grid,
    plan_sweep,
    setting_name,
    split_values,
)
from .launchers import LAUNCHERS, Local, Serial, Slurm, SlurmOptions, parse_sbatch, todo
from .record import SweepRecord
from .status import CellStatus, format_status, sweep_status

__all__ = [
    "LAUNCHERS", "Cell", "CellStatus", "Local", "Serial", "Slurm", "SlurmOptions", "SweepRecord", "format_plan",
    "format_status", "parse_items", "parse_list", "parse_sbatch", "parse_seeds", "plan_paper_grid", "plan_sweep",
    "run_sweep", "setting_name", "split_values", "sweep_status",
]


def format_plan(cells: Sequence[Cell], out: str | Path, statuses: dict[str, str]) -> str:
    """The plan as printed before a sweep (and by --dry-run): the grid's size, the overrides every cell shares,
    then one line per cell with its state (``done``, ``resume``, ``todo`` or ``running elsewhere``)."""
    settings = {tuple(sorted(c.setting.items())) for c in cells}
    seeds = sorted({c.seed for c in cells})
    presets = sorted({c.preset for c in cells})
    on = f"preset {presets[0]}" if len(presets) == 1 else f"{len(presets)} presets"
    lines = [f"sweep on {on}: {len(settings)} setting(s) x {len(seeds)} seed(s) = {len(cells)} runs -> {out}"]
    shared = [o for o in cells[0].overrides if all(o in c.overrides for c in cells)
              and o.split("=", 1)[0] not in cells[0].setting and not o.startswith("seed=")]
    if shared:
        lines.append(f"  fixed: {' '.join(shared)}")
    width = len(str(len(cells)))
    for i, c in enumerate(cells):
        lines.append(f"  [{i + 1:>{width}}/{len(cells)}] {statuses.get(c.name, ''):6s} {c.name}  {c.out}")
    return "\n".join(lines)


def run_sweep(cells: Sequence[Cell], out: str | Path, launcher: Serial | Local | Slurm, *, dry_run: bool = False,
              report: bool = True, argv: Sequence[str] | None = None, say=print) -> dict[str, Any]:
    """Record and print the plan, run the cells that need it on ``launcher``, then write ``OUT/report`` over the
    finished cells (naming the missing ones). Returns {"cells", "failed", "report"}."""
    out = Path(out)
    record = SweepRecord.read(out)
    summary: dict[str, Any] = {"cells": [str(c.out) for c in cells], "failed": [], "report": None}
    states = {c.name: plan_state(c) for c in cells}  # a folder of another experiment is refused here, first
    say(format_plan(cells, out, states))
    if dry_run:  # nothing written: the plan, every folder's state, and what the launcher would submit
        if isinstance(launcher, Slurm):
            say(launcher.describe(list(cells), out / ".submitit"))
        return summary
    record.plan(cells, argv)
    pending = todo(cells, say)
    if pending:
        summary["failed"] = launcher.run(pending, record, say=say)
    finished = [c for c in cells if RunFolder(c.out).is_finished()]
    if report and finished:
        from ..report import build_report

        missing = [(c.out, c.cfg) for c in cells if not RunFolder(c.out).is_finished()]
        report_dir = out / "report"
        build_report([c.out for c in finished], report_dir, missing=missing)
        summary["report"] = str(report_dir)
        say(f"report: {report_dir / 'report.md'} ({len(finished)} of {len(cells)} cells finished)")
    if summary["failed"]:
        say(f"{len(summary['failed'])} cell(s) failed: {', '.join(summary['failed'])} (sr2lora sweep --status "
            f"{out} shows their logs)")
    return summary


def plan_state(cell: Cell) -> str:
    """``done``, ``resume``, ``todo`` or ``running elsewhere`` for a cell's folder; a folder holding another
    experiment is an OutputError naming the keys that differ (before any cell runs)."""
    from ..runs.lock import owner_of
    from ..runs.reuse import folder_state

    state = folder_state(cell.out, cell.cfg, hint="remove it or choose another --out")
    if state != "done" and owner_of(cell.out) is not None:
        return "running elsewhere"
    return {"done": "done", "resumable": "resume", "fresh": "todo"}[state]
