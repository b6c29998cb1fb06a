"""Collecting finished runs for a report: their results and configs, grouped by (preset, method, setting).

Runs are grouped by (preset, method) and, where runs of one (preset, method) differ in config keys other than the
seed, by a short label of the differing keys (``rank=4, weight=0.5``). Runs of different training (or
evaluation) precision are never pooled: ``auto`` means bf16 on one machine and fp32 on another.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RUNTIME_KEYS, flatten
from ..runs.folder import RunFolder

METRICS = ("final_acc", "avg_acc", "forgetting", "bwt", "plasticity")
# Config keys that never define a group: the seed, labels, where/how fast a run computes, the analysis.
IGNORED_KEYS = {"seed", "preset", "description", *RUNTIME_KEYS}
IGNORED_PREFIXES = ("analysis.",)


@dataclass
class RunResult:
    """One finished run as the report sees it: its folder, results and flattened config (empty when absent)."""

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
    except RecursionError as exc:
        raise ValueError(f"{file}: not the results of a sr2lora run (JSON nested too deeply to read)") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc}); the file is truncated or damaged, rerun or remove "
                         f"that run") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read it ({exc})") from exc
    if not isinstance(results, dict):
        raise ValueError(f"{file}: expected a JSON object (a sr2lora run's results), got a {type(results).__name__}")
    missing = [k for k in (*RESULT_KEYS, *METRICS) if k not in results]
    if missing:
        raise ValueError(f"{file}: not the results of a sr2lora run (lacks {', '.join(missing)})")
    check_result_types(file, results)
    return results


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def check_result_types(file: Path, results: dict[str, Any]) -> None:
    """ValueError naming the file and the key when a value the report computes with has another type (a dict
    where a number belongs, a matrix row that is not a list of numbers)."""
    for key in METRICS:
        if not _number(results[key]):
            raise ValueError(f"{file}: {key} is a {type(results[key]).__name__}, not a number (or null); the file "
                             f"is not a sr2lora run's results or was edited")
    curve, matrix = results["acc_curve"], results["accuracy_matrix"]
    if not isinstance(curve, list) or not curve or not all(_number(v) for v in curve):
        raise ValueError(f"{file}: acc_curve is not a list of numbers; the file was edited or damaged")
    rows_ok = isinstance(matrix, list) and len(matrix) == len(curve) and all(
        isinstance(row, list) and len(row) == len(curve) and all(_number(v) for v in row) for row in matrix)
    if not rows_ok:
        raise ValueError(f"{file}: accuracy_matrix is not a {len(curve)} x {len(curve)} list of numbers (acc_curve "
                         f"has {len(curve)} tasks); the file was edited or damaged")


def read_run_result(path: str | Path) -> RunResult:
    """Read a finished run folder's results and config (JSON and YAML only: nothing is rebuilt)."""
    folder = RunFolder(path)
    path = folder.path
    results = read_results_file(folder.results_file)
    cfg_file = folder.config_file
    try:
        loaded = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"{cfg_file}: cannot read the run's config ({type(exc).__name__}: {exc})") from exc
    if not isinstance(loaded or {}, dict):
        raise ValueError(f"{cfg_file}: not a sr2lora config (a {type(loaded).__name__}, not a mapping)")
    config = flatten(loaded or {})
    if "precision" in results:  # `auto` means bf16 on one machine and fp32 on another: group by what ran
        config["train.precision"] = results["precision"]
        # runs from before evaluation was float32 evaluated in their training precision: never pooled with newer ones
        config["eval_precision"] = results.get("eval_precision", results["precision"])
    return RunResult(path, results, config)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def differing_keys(runs: Sequence[RunResult]) -> list[str]:
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


def setting_label(run: RunResult, keys: Sequence[str]) -> str:
    """``rank=4, weight=0.5``: the run's values of the keys that vary within its (preset, method)."""
    short = short_keys(keys)
    return ", ".join(f"{short[k]}={_fmt_value(run.config.get(k))}" for k in keys)


@dataclass
class Group:
    """Runs of one (preset, method, setting) — typically several seeds of one configuration."""

    preset: str
    method: str
    label: str
    runs: list[RunResult] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)  # planned runs of this group that have not finished

    @property
    def name(self) -> str:
        return f"{self.method} [{self.label}]" if self.label else self.method

    @property
    def full_name(self) -> str:
        return f"{self.preset}/{self.name}"

    @property
    def slug(self) -> str:
        return slug(f"{self.preset}_{self.method}_{self.label}")


def match_missing(groups: Sequence[Group], missing: Sequence[tuple[Path, dict[str, Any]]]) -> list[Path]:
    """Attach each planned but unfinished run (folder, flattened config) to the group it would have joined
    (``Group.missing``): same preset and method and the same values of the keys that tell the group apart.
    Returns the folders that match no group (a whole setting without any finished run)."""
    unmatched = []
    for folder, config in missing:
        preset = str(config.get("preset") or "custom")
        method = str(config.get("method.name") or "?")
        cands = [g for g in groups if g.preset == preset and g.method == method]
        home = None
        for g in cands:
            keys = [k for k in differing_keys([r for c in cands for r in c.runs]) if k in config
                    and k not in ("train.precision", "eval_precision")]  # precision: resolved only once run
            if all(_fmt_value(config.get(k)) == _fmt_value(g.runs[0].config.get(k)) for k in keys):
                home = g
                break
        if home is None:
            unmatched.append(Path(folder))
        else:
            home.missing.append(Path(folder))
    return unmatched


def group_runs(runs: Sequence[RunResult]) -> list[Group]:
    """Group by (preset, method), then by the label of the config keys that differ inside that pair."""
    by_pm: dict[tuple[str, str], list[RunResult]] = {}
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


SLUG_MAX = 120  # file-name part length kept; longer names (many differing keys) end in a hash instead


def short_slug(slug: str) -> str:
    """``slug`` cut to SLUG_MAX characters plus a hash of the whole, so file names stay under the OS limit."""
    if len(slug) <= SLUG_MAX:
        return slug
    return f"{slug[:SLUG_MAX]}-{hashlib.sha256(slug.encode('utf-8')).hexdigest()[:12]}"


def slug(s: str) -> str:
    return short_slug(re.sub(r"[^A-Za-z0-9._=+-]+", "_", s).strip("_") or "x")
