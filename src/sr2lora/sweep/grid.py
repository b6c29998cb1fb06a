"""The grid of a sweep: its cells (one run folder each) from ``key=v1,v2`` items and seeds, or a named grid.

Arguments after the options are ``key=value`` items. An item whose value lists several values is a grid axis;
any other item is a fixed override applied to every cell:

- ``method.weight=0.1,1,10`` — values separated by commas (outside brackets and quotes), each parsed as YAML;
- ``method.layers=[0,1]`` — one list value: a fixed override (commas inside brackets do not split);
- ``method.layers=all;first:4;[0,5,11]`` — ``;`` separates the values instead of commas when any is present
  (the way to sweep list values); quote the argument in the shell.

The grid is the cartesian product of the axes (in the order given), times the seeds (innermost). Each cell goes
to ``OUT/<setting>/seed<S>`` where ``<setting>`` is ``key=value`` of the axes joined by ``__`` (``base`` without
axes). The named grid ``paper`` is the paper's: datasets × task counts × methods × seeds, each cell
``sr2lora run --preset <dataset>-<T>t method.name=<m> seed=<s>`` into ``OUT/<dataset>-<T>t/<m>/seed<s>``.
Every cell's config is built (and validated) when the grid is planned, so a bad setting fails before any run.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import ConfigError, RunConfig, load_config

# The paper's grid: its datasets, task counts, seeds and the methods compared (``sr2lora sweep --grid paper``).
PAPER_DATASETS = ("cifar100", "imagenet-r", "imagenet-a", "cub200")
PAPER_TASKS = (5, 10, 20, 50)
PAPER_SEEDS = (0, 1993, 1996)
# SR²-LoRA, the variants the paper compares, and the baselines: 10 methods, 480 cells in all
PAPER_METHODS = ("sr2lora", "entrywise", "spectral-batch", "feat-all", "feat-last", "seqlora", "frozen", "inflora",
                 "sdlora", "ranpac")


@dataclass
class Cell:
    """One planned run of a sweep: its name, preset, overrides (seed included), folder and resolved config."""

    name: str  # e.g. ``weight=0.5__rank=4/seed1993`` or ``imagenet-r-10t/sr2lora/seed0``
    preset: str
    overrides: list[str]
    out: Path
    cfg: RunConfig
    setting: dict[str, str]  # the grid axes' values of this cell (what tells it from the others)

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def command(self, python: str, extra: list[str] | None = None, flags: list[str] | None = None) -> list[str]:
        """The cell as one idempotent command line: start it, resume it, or do nothing when it finished
        (``sr2lora run --continue``); ``extra`` are runtime overrides (threads, device), ``flags`` options of
        ``run`` (``--allow-other-compute``)."""
        return [python, "-m", "sr2lora", "run", "--continue", *(flags or []), "--preset", self.preset,
                "--out", str(self.out), *self.overrides, *(extra or [])]


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


def _cell(preset: str, overrides: list[str], out: Path, name: str, setting: dict[str, str]) -> Cell:
    try:
        cfg = load_config(preset, overrides)
    except ConfigError as exc:
        raise ConfigError(f"sweep cell {name}: {exc}") from exc
    return Cell(name, preset, overrides, out, cfg, setting)


def _check_distinct(cells: list[Cell]) -> list[Cell]:
    if len({c.out for c in cells}) != len(cells):
        raise ConfigError("sweep: two settings map to the same folder; use distinct values")
    if not cells:
        raise ConfigError("sweep: the grid is empty")
    return cells


def plan_sweep(preset: str, items: list[str], out: str | Path, seeds: list[int] | None = None) -> list[Cell]:
    """The cells of a grid over ``preset``: axes × seeds (``--seeds``; None: the preset's seed)."""
    axes, fixed = parse_items(items)
    out = Path(out)
    cells: list[Cell] = []
    for combo in list(itertools.product(*axes.values())) if axes else [()]:
        setting = dict(zip(axes, combo))
        grid = [f"{k}={v}" for k, v in setting.items()]
        for seed in seeds if seeds is not None else [None]:
            overrides = [*fixed, *grid, *([f"seed={seed}"] if seed is not None else [])]
            name = setting_name(setting)
            cell = _cell(preset, overrides, out, name, setting)
            cell.out = out / name / f"seed{cell.seed}"
            cell.name = f"{name}/seed{cell.seed}"
            cells.append(cell)
    return _check_distinct(cells)


def plan_paper_grid(out: str | Path, datasets: list[str] | None = None, tasks: list[int] | None = None,
                    seeds: list[int] | None = None, methods: list[str] | None = None,
                    overrides: list[str] | None = None) -> list[Cell]:
    """The cells of the paper's grid (or the slice given): ``<dataset>-<T>t`` presets × methods × seeds, each in
    ``OUT/<dataset>-<T>t/<method>/seed<s>``; ``overrides`` (e.g. ``data.root=...``) go to every cell."""
    from ..config import preset_names

    out = Path(out)
    cells: list[Cell] = []
    known = set(preset_names())
    for ds in datasets or PAPER_DATASETS:
        for t in tasks or PAPER_TASKS:
            preset = f"{ds}-{t}t"
            if preset not in known:
                raise ConfigError(f"sweep --grid paper: no preset {preset} (datasets: {', '.join(PAPER_DATASETS)}; "
                                  f"tasks: {', '.join(map(str, PAPER_TASKS))})")
            for m in methods or PAPER_METHODS:
                for s in seeds if seeds is not None else PAPER_SEEDS:
                    cell_overrides = [*(overrides or []), f"method.name={m}", f"seed={s}"]
                    setting = {"preset": preset, "method.name": m}
                    cells.append(_cell(preset, cell_overrides, out / preset / m / f"seed{s}",
                                       f"{preset}/{m}/seed{s}", setting))
    return _check_distinct(cells)


def parse_list(text: str | None, kind: type = str, option: str = "") -> list | None:
    """``"a,b"`` or ``"a b"`` → [a, b] (of ``kind``); None or empty → None (the default)."""
    if text is None or not text.strip():
        return None
    try:
        return [kind(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError as exc:
        raise ConfigError(f"{option}: expected a list of {kind.__name__} values, got {text!r}") from exc
