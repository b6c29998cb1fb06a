"""`sr2lora sweep`: a grid of runs (ablations such as method.layers, model.rank, method.weight) and its report.

Arguments after the options are ``key=value`` items. An item whose value lists several values is a grid axis;
any other item is a fixed override applied to every run:

- ``method.weight=0.1,1,10`` — values separated by commas (outside brackets and quotes), each parsed as YAML;
- ``method.layers=[0,1]`` — one list value: a fixed override (commas inside brackets do not split);
- ``method.layers=all;first:4;[0,5,11]`` — ``;`` separates the values instead of commas when any is present
  (the way to sweep list values); quote the argument in the shell.

The grid is the cartesian product of the axes (in the order given), times ``--seeds`` (innermost). Each run
goes to ``OUT/<setting>/seed<S>`` where ``<setting>`` is ``key=value`` of the axes joined by ``__`` (``base``
without axes). Runs are sequential; a folder with a finished run of the same experiment is skipped and one
with an unfinished run is resumed (:mod:`sr2lora.runs.reuse`), so an interrupted sweep (Ctrl-C, SIGTERM: the
run in progress stops cleanly at its last complete task) continues where it stopped when the same command is
given again. At the end ``OUT/report`` is written with :mod:`sr2lora.report`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, RunConfig, load_config
from .core.signals import check_interrupt
from .runs.folder import RunFolder
from .runs.reuse import folder_state


@dataclass
class SweepRun:
    """One planned run: the grid setting, its seed, the overrides it is built with and its folder."""

    setting: dict[str, str]  # axis key -> raw value
    seed: int
    overrides: list[str]
    out: Path
    cfg: RunConfig

    @property
    def status(self) -> str:
        """``done``, ``resume`` or ``todo`` (:func:`sr2lora.runs.reuse.folder_state`; a folder holding another
        experiment is an OutputError naming what differs)."""
        state = folder_state(self.out, self.cfg, hint="remove it or choose another --out")
        return {"done": "done", "resumable": "resume", "fresh": "todo"}[state]


def split_values(raw: str) -> list[str]:
    """The values of one item: split on ``;`` when present, else on commas outside brackets and quotes."""
    if ";" in raw:
        return [p.strip() for p in raw.split(";") if p.strip() != ""]
    parts, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def parse_items(items: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(grid axes {key: [raw values]}, fixed overrides ``key=value``) from the command-line items."""
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"sweep item {item!r}: expected key=value or key=v1,v2,...")
        key, raw = item.split("=", 1)
        key = key.strip()
        values = split_values(raw)
        if key == "seed":
            raise ConfigError("sweep: give seeds with --seeds 0,1993,1996, not seed=...")
        if len(values) > 1:
            if key in axes:
                raise ConfigError(f"sweep: {key} given twice")
            for v in values:
                try:
                    yaml.safe_load(v)
                except yaml.YAMLError as exc:
                    raise ConfigError(f"sweep item {item!r}: value {v!r} is not valid YAML ({exc})") from exc
            axes[key] = values
        else:
            fixed.append(f"{key}={raw}")
    return axes, fixed


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1993,1996"`` → [0, 1993, 1996]; None keeps the preset's seed."""
    if text is None or text.strip() == "":
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip() != ""]
    except ValueError as exc:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from exc
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds: expected distinct integers, got {text!r}")
    return seeds


def _slug(value: str) -> str:
    v = re.sub(r"[\[\]{}'\" ]", "", value).replace(",", "-").replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", v) or "_"


def setting_name(setting: dict[str, str]) -> str:
    """Folder name of a grid setting: ``weight=0.5__rank=4`` (short keys unless ambiguous), ``base`` if empty."""
    if not setting:
        return "base"
    last = [k.rsplit(".", 1)[-1] for k in setting]
    names = [s if last.count(s) == 1 else k for k, s in zip(setting, last)]
    return "__".join(f"{n}={_slug(v)}" for n, v in zip(names, setting.values()))


def plan_sweep(preset: str, items: list[str], out: str | Path, seeds: list[int] | None = None) -> list[SweepRun]:
    """Expand the grid into runs; every run's config is built (and validated) now, so errors come first."""
    axes, fixed = parse_items(items)
    out = Path(out)
    runs: list[SweepRun] = []
    combos = list(itertools.product(*axes.values())) if axes else [()]
    for combo in combos:
        setting = dict(zip(axes, combo))
        grid = [f"{k}={v}" for k, v in setting.items()]
        for seed in seeds if seeds is not None else [None]:
            overrides = [*fixed, *grid, *([f"seed={seed}"] if seed is not None else [])]
            try:
                cfg = load_config(preset, overrides)
            except ConfigError as exc:
                raise ConfigError(f"sweep setting {setting_name(setting)}: {exc}") from exc
            runs.append(SweepRun(setting, cfg.seed, overrides, out / setting_name(setting) / f"seed{cfg.seed}",
                                 cfg))
    folders = [r.out for r in runs]
    if len(set(folders)) != len(folders):
        raise ConfigError("sweep: two settings map to the same folder; use distinct values")
    return runs


def format_plan(preset: str, runs: list[SweepRun], out: str | Path) -> str:
    """The plan as printed before a sweep (and by --dry-run)."""
    settings = {setting_name(r.setting) for r in runs}
    seeds = sorted({r.seed for r in runs})
    fixed = [o for o in runs[0].overrides if o.split("=", 1)[0] not in runs[0].setting and not o.startswith("seed=")]
    lines = [f"sweep on preset {preset}: {len(settings)} setting(s) x {len(seeds)} seed(s) = {len(runs)} runs -> {out}"]
    if fixed:
        lines.append(f"  fixed: {' '.join(fixed)}")
    width = len(str(len(runs)))
    for i, r in enumerate(runs):
        desc = " ".join(f"{k}={v}" for k, v in r.setting.items()) or "(base)"
        lines.append(f"  [{i + 1:>{width}}/{len(runs)}] {r.status:6s} {desc} seed={r.seed}  {r.out}")
    return "\n".join(lines)


def run_sweep(preset: str, items: list[str], out: str | Path, seeds: list[int] | None = None,
              dry_run: bool = False, progress: bool = True, report: bool = True) -> dict[str, Any]:
    """Plan, print, run each run not finished yet (sequentially) and write ``OUT/report``.

    Returns {"runs": [...], "failed": [...], "report": path or None}. A run that fails with a TrainingError (a
    diverging setting) is reported and the sweep goes on.
    """
    from .core.errors import TrainingError
    from .launch import launch

    out = Path(out)
    runs = plan_sweep(preset, items, out, seeds)
    print(format_plan(preset, runs, out), flush=True)  # every folder checked before any run starts
    summary: dict[str, Any] = {"runs": [str(r.out) for r in runs], "failed": [], "report": None}
    if dry_run:
        return summary
    for i, r in enumerate(runs):
        tag = f"[{i + 1}/{len(runs)}] {setting_name(r.setting)} seed={r.seed}"
        status = r.status
        if status == "done":
            print(f"{tag}: finished already, skipped", flush=True)
            continue
        check_interrupt()  # a stop requested between two runs
        try:
            if status == "resume":  # the same experiment; runtime keys (device, threads...) as planned now
                print(f"{tag}: resuming", flush=True)
                res = launch(r.cfg, r.out, resume=True, progress=progress)
            else:
                print(f"{tag}: running", flush=True)
                res = launch(r.cfg, r.out, progress=progress)
        except TrainingError as exc:
            print(f"{tag}: FAILED: {exc}", flush=True)
            summary["failed"].append(str(r.out))
            continue
        print(f"{tag}: final accuracy {res['final_acc']:.2f}%, average {res['avg_acc']:.2f}%, "
              f"forgetting {res['forgetting']:.2f}", flush=True)
    finished = [r.out for r in runs if RunFolder(r.out).is_finished()]
    if report and finished:
        from .report import build_report

        report_dir = out / "report"
        build_report(finished, report_dir)
        summary["report"] = str(report_dir)
        print(f"report: {report_dir / 'report.md'} ({len(finished)} runs)", flush=True)
    if summary["failed"]:
        print(f"{len(summary['failed'])} run(s) failed: {', '.join(summary['failed'])}", flush=True)
    return summary
