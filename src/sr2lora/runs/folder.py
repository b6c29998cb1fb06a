"""The run folder: the one place that knows what a run writes and under which names.

Layout (everything sr2lora writes into ``--out RUN``)::

    RUN/config.yaml          the fully resolved config, written before training (itself a valid --preset)
    RUN/checkpoint/          the last complete task (sr2lora.runs.checkpoint):
        model.safetensors    LoRA factors (A, B) of every task so far and every task's head
        stats.safetensors    the classifier's state (class statistics, ridge solution, ...)
        method.safetensors   the method's own state carried across tasks (may be empty)
        heads.safetensors    the heads as after each task
        state.json           task index, metrics so far, class order, task offsets, hashes
        manifest.json        every file above with its sha256, written last
    RUN/metrics.csv          one row per training epoch
    RUN/tb/                  TensorBoard scalars
    RUN/results.json         written when the run finishes
    RUN/drift.json           the drift analysis (analysis.enabled, or sr2lora analyze)
    RUN/robustness.json      sr2lora analyze --robustness
    RUN/.sr2lora.lock        while a process writes the folder (sr2lora.runs.lock)

:class:`RunFolder` names these paths and reads nothing when it is made; every other module asks it for a path
instead of spelling a file name (a test checks). Reading what a folder holds is :mod:`sr2lora.runs.saved`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..core.errors import CheckpointError, OutputError

PROBE_PREFIX = ".sr2lora-write-probe-"  # check_output_writable's probe file, removed at once


class RunFolder:
    """A run folder's paths (nothing is read or created when one is made)."""

    CONFIG = "config.yaml"
    RESULTS = "results.json"
    METRICS = "metrics.csv"
    TENSORBOARD = "tb"
    DRIFT = "drift.json"
    ROBUSTNESS = "robustness.json"
    CHECKPOINT = "checkpoint"
    LOCK = ".sr2lora.lock"
    # inside checkpoint/
    STATE = "state.json"
    MANIFEST = "manifest.json"
    GROUPS = ("model", "stats", "method", "heads")  # the tensor groups, one safetensors file each
    # what every checkpoint holds, whatever its manifest says (runs from before per-task head snapshots lack heads)
    REQUIRED_GROUPS = ("model", "stats", "method")
    HEADS_GROUP = "heads"  # the heads as after each task (sr2lora.models.state)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- paths
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def results_file(self) -> Path:
        return self.path / self.RESULTS

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def drift_file(self) -> Path:
        return self.path / self.DRIFT

    @property
    def robustness_file(self) -> Path:
        return self.path / self.ROBUSTNESS

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def state_file(self) -> Path:
        return self.checkpoint_dir / self.STATE

    @staticmethod
    def group_name(group: str) -> str:
        """The file name of a tensor group in a checkpoint folder (``<group>.safetensors``)."""
        return f"{group}.safetensors"

    def group_file(self, group: str, checkpoint: Path | None = None) -> Path:
        """``checkpoint/<group>.safetensors`` (of ``checkpoint``, a folder being written, when given)."""
        return (checkpoint or self.checkpoint_dir) / self.group_name(group)

    def temp_checkpoints(self) -> list[Path]:
        """Checkpoint folders left half-written by a crash (``checkpoint.tmp-*``)."""
        return sorted(self.path.glob(f"{self.CHECKPOINT}.tmp-*"))

    def swapped_checkpoints(self) -> list[Path]:
        """Previous checkpoints left by a crash between the two renames of a swap (``checkpoint.old-*``)."""
        return sorted(self.path.glob(f"{self.CHECKPOINT}.old-*"))

    # ---- what is there
    def is_run(self) -> bool:
        """Whether a run was started here (its config.yaml exists)."""
        return self.config_file.is_file()

    def foreign_entries(self) -> list[str]:
        """Names in a folder that holds no run (no config.yaml) which sr2lora did not put there: anything but its lock
        and write probe. A run started there would overwrite or delete them (``checkpoint/``, ``metrics.csv``)."""
        if not self.path.is_dir() or self.is_run():
            return []
        try:
            names = sorted(e.name for e in os.scandir(self.path))
        except OSError:
            return []
        return [n for n in names if n != self.LOCK and not n.startswith(PROBE_PREFIX)]

    def is_finished(self) -> bool:
        """Whether the run finished (its results.json exists)."""
        return self.results_file.is_file()

    def read_results(self) -> dict[str, Any]:
        """results.json as a dict; CheckpointError naming the file when it is missing or not a JSON object."""
        try:
            results = json.loads(self.results_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{self.path}: the run is not finished (no {self.RESULTS}); finish it with "
                                  f"`sr2lora run --resume {self.path}`") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.results_file}: unreadable results ({exc})") from exc
        if not isinstance(results, dict):
            raise CheckpointError(f"{self.results_file}: expected a JSON object, got a {type(results).__name__}")
        return results


def discover_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Finished run folders among ``paths``: a folder holding results.json, or every such folder below a parent."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if RunFolder(p).is_finished():
            cands = [p]
        elif p.is_dir():
            cands = sorted(f.parent for f in p.rglob(RunFolder.RESULTS))
        else:
            raise FileNotFoundError(f"{p}: no such folder")
        if not cands:
            raise FileNotFoundError(f"{p}: no run folder ({RunFolder.RESULTS}) in it")
        for c in cands:
            if c.resolve() not in {f.resolve() for f in found}:
                found.append(c)
    return found


# ---------------------------------------------------------------- before anything is written


def check_out_path(out_dir: str | Path, flag: str = "--out") -> None:
    """OutputError when a component of ``out_dir`` is longer than the file system allows (255 bytes on most):
    every later file operation on it would fail with a traceback."""
    path = Path(out_dir).expanduser()
    limit = 255
    for parent in path.parents:  # the nearest existing folder tells its file system's limit
        try:
            limit = os.pathconf(parent, "PC_NAME_MAX")
            break
        except (OSError, ValueError, AttributeError):
            continue
    for part in path.parts:
        n = len(os.fsencode(part))
        if n > limit:
            raise OutputError(f"{flag} {out_dir}: the name {part[:40]}... is {n} bytes long, more than the {limit} "
                              f"the file system allows; choose a shorter {flag} (nothing was created)")


def check_output_writable(out_dir: str | Path, hint: str = "choose another with --out") -> None:
    """Create ``out_dir`` (with parents) and write, fsync and remove a probe file; OutputError if any fails."""
    out = Path(out_dir)
    probe = out / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"sr2lora write probe\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"output folder {out}: cannot create or write it ({exc.strerror or exc}); {hint}") from exc
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def check_out_outside_data(cfg: RunConfig, out_dir: str | Path) -> None:
    """Raise OutputError when ``out_dir`` lies inside the dataset's folder: a run folder there is read as a
    class (or its report's PNGs as images) by the next scan, and nothing may be written into a data folder."""
    d = cfg.data
    if d.dataset == "smoke":
        return
    if d.root:
        root = Path(d.root).expanduser()
    else:
        from ..data.folders import default_data_root

        root = default_data_root() / d.dataset
    data_real, out_real = os.path.realpath(root), os.path.realpath(Path(out_dir).expanduser())
    if out_real == data_real or out_real.startswith(data_real.rstrip(os.sep) + os.sep):
        raise OutputError(
            f"--out {out_dir}: inside the dataset folder {root} (data.root); a run folder there would be read as "
            f"data by the next run. Choose an --out outside {root} (nothing was created)"
        )
