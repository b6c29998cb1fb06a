"""Start or resume ONE run: the one place where every entry point (``run``, ``sweep``, ``demo``) begins a run.

The order is fixed: the checks that need no data (is the folder free, does it hold another experiment, is it
outside the dataset and writable), then the folder's lock (one process per run folder), then SIGINT/SIGTERM
turned into a clean stop after the current step, then the trainer with the loggers chosen here (the run
folder's ``metrics.csv`` and TensorBoard, the drift tracker with ``analysis.enabled``) beside the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import RUNTIME_KEYS, RunConfig, load_config
from .core.errors import CheckpointError, OutputError
from .core.signals import Interrupted, stop_on_signals
from .runs.folder import RunFolder, check_out_outside_data, check_out_path
from .runs.lock import FolderInUse, check_not_in_use, run_folder_lock
from .runs.reuse import ExperimentMismatch, folder_state
from .train.callbacks import Callback, CSVLog, TensorBoardLog


def launch(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
           callbacks: Sequence[Callback] = (), allow_other_compute: bool = False) -> dict[str, Any]:
    """Run ``cfg`` into ``out`` (``resume``: from its last complete task) and return the results.

    Holds the folder's lock and the signal handlers for the whole run; an interrupt raises
    :class:`~sr2lora.core.signals.Interrupted` carrying the folder (the CLI prints how to resume). A resume that
    would compute otherwise than the checkpoint's tasks did is refused unless ``allow_other_compute``
    (:func:`check_same_compute`).
    """
    from .train.engine import Trainer

    folder = RunFolder(out)
    check_out_path(folder.path)
    check_out_outside_data(cfg, folder.path)  # before the lock creates the folder
    if resume:
        check_same_compute(cfg, folder.path, allow=allow_other_compute)
    # a resume cannot move to another folder: where the run's own folder is not writable, say what can be done
    hint = ("make it writable, or copy the run folder to a writable disk and resume the copy (`sr2lora run --resume "
            "COPY`)") if resume else "choose another with --out"
    try:
        with stop_on_signals(), run_folder_lock(folder.path, hint):
            trainer = Trainer(cfg, folder.path, progress=progress,
                              callbacks=[*run_loggers(folder, cfg), *callbacks])
            return trainer.run(resume=resume)
    except Interrupted as exc:
        exc.run_dir = folder.path
        raise
    except OSError as exc:
        if folder.path.is_dir():
            raise
        raise OutputError(
            f"{folder.path}: the run folder was removed or renamed while the run wrote into it ({exc.strerror}: "
            f"{exc.filename}); the run stopped. If it was moved, resume it where it is now with `sr2lora run "
            f"--resume NEW_PLACE`; else start the run again"
        ) from exc


# The flag of `sr2lora run` that lets a resume compute otherwise than the checkpoint's tasks did.
ALLOW_OTHER_COMPUTE = "--allow-other-compute"


def check_same_compute(cfg: RunConfig, run_dir: str | Path, *, allow: bool = False) -> None:
    """Refuse (CheckpointError) to resume ``run_dir`` with ``cfg`` where the rest of the run would compute otherwise
    than its checkpointed tasks did: on another kind of device, with another thread count, evaluation batch size or
    training precision. Each of these changes the last bits of the numbers (measured: 1 vs 2 threads, evaluation
    batches of 7, 128 or 1000 give other weights and class statistics), so the run would not end with the numbers
    of an uninterrupted one. ``allow`` (``--allow-other-compute``): continue with a warning; results.json records
    where each task computed (``task_compute``). Checkpoints without that record are not checked."""
    import json
    import warnings

    from .core import hardware

    folder = RunFolder(run_dir)
    try:
        state = json.loads(folder.state_file.read_text(encoding="utf-8"))
        before = state["task_compute"][-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return  # no checkpoint, or one from before the record (a damaged one is named by the resume's checks)
    if not isinstance(before, dict):
        return
    t = cfg.train
    hardware.check_device(t.device, "train.device")  # a device this machine lacks: named, before it is probed
    now = hardware.planned_compute(t.device, t.precision, t.threads, t.eval_batch_size)
    changes = hardware.compute_changes(before, now)
    if not changes:
        return
    if allow:
        warnings.warn(f"{folder.path}: resuming with {'; '.join(changes)} ({ALLOW_OTHER_COMPUTE}): the rest of the run "
                      f"computes otherwise than its first tasks; {folder.RESULTS} records where each task computed "
                      f"(task_compute)", stacklevel=2)
        return
    keep = [f"{key}={before[k]}" for k, key in hardware.COMPUTE_OVERRIDES.items() if k in before and before[k] != now[k]]
    fix = (f"resume with {' '.join(keep)}" if len(keep) == len(changes)
           else "resume on the kind of machine it started on") + (" to keep the numbers")
    raise CheckpointError(
        f"{folder.path}: the checkpoint's tasks computed otherwise than this resume would ({'; '.join(changes)}); "
        f"the rest of the run would not give the numbers of an uninterrupted run. {fix[:1].upper()}{fix[1:]}, or add "
        f"{ALLOW_OTHER_COMPUTE} to continue anyway ({folder.RESULTS} then records where each task computed)"
    )


def run_loggers(folder: RunFolder, cfg: RunConfig) -> list[Callback]:
    """The run folder's own loggers: ``metrics.csv``, TensorBoard scalars and, with ``analysis.enabled``, the
    drift tracker (``drift.json`` after every task)."""
    logs: list[Callback] = [CSVLog(folder.metrics_file), TensorBoardLog(folder.tensorboard_dir)]
    if cfg.analysis.enabled:
        from .analysis.drift import DriftLog

        logs.append(DriftLog(folder.drift_file))
    return logs


def check_new_run(cfg: RunConfig, out: str | Path) -> None:
    """Refuse to start ``cfg`` into ``out`` when a process is writing it or it holds a run already (finished or
    not, this experiment or another); nothing is written."""
    check_out_path(out)
    check_not_in_use(out)  # a run still writing there is named by its pid
    state = folder_state(out, cfg, hint="choose another --out")
    if state == "done":
        raise OutputError(f"--out {out}: already holds a run of this experiment, finished "
                          f"({RunFolder.RESULTS}); choose another --out (nothing was overwritten)")
    if state == "resumable":
        raise OutputError(f"--out {out}: already holds a run; continue it with `sr2lora run --resume {out}` or choose "
                          f"another --out (nothing was overwritten)")


# The exit status of `sr2lora run --continue` when the run folder is in use by another live process: the cell is
# running elsewhere (another sweep, another job); a sweep counts it as such, not as a failure (EX_TEMPFAIL).
RUNNING_ELSEWHERE = 75


class RunningElsewhere(OutputError):
    """The run folder is in use by another live sr2lora process."""

    exit_code = RUNNING_ELSEWHERE


def running_elsewhere(out: str | Path, exc: FolderInUse) -> RunningElsewhere:
    """The one-line error of a ``--continue`` whose folder another live process holds (``exc``): who holds it,
    and that it is left to that process (a sweep's cell run by another sweep or job)."""
    return RunningElsewhere(f"{out}: running elsewhere ({exc.holder}); left to it")


def continue_state(cfg: RunConfig, out: str | Path) -> bool | None:
    """What ``sr2lora run --continue`` does with ``out``: False (start it), True (resume it: it holds this
    experiment, unfinished) or None (finished: nothing to do). A folder in use by another live process is
    :class:`RunningElsewhere`; one holding another experiment is refused, naming the keys that differ."""
    check_out_path(out)
    try:
        check_not_in_use(out)
    except FolderInUse as exc:
        raise running_elsewhere(out, exc) from exc
    state = folder_state(out, cfg, hint="remove it or choose another --out")
    if state == "done":
        return None
    if state == "resumable":
        from .runs.checkpoint import check_resumable

        check_resumable(out)
        return True
    return False


def resume_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> RunConfig | None:
    """The config to resume ``run_dir`` with (its config.yaml plus runtime-only ``overrides``), or None when the
    run has finished. Refuses, before any work, a folder that is not a run, overrides that would change the
    experiment, and a checkpoint whose files are not the ones written."""
    from .runs.checkpoint import check_resumable

    folder = RunFolder(run_dir)
    check_out_path(run_dir, "--resume")
    if not folder.is_run():
        raise OutputError(f"--resume {run_dir}: not a run folder (no {folder.CONFIG}); start one with `sr2lora run`")
    planned = load_config(str(folder.config_file), list(overrides))
    try:
        state = folder_state(run_dir, planned)
    except ExperimentMismatch as exc:
        if exc.changed == ["data.skip_bad"] and planned.data.skip_bad:
            # the way forward after a damaged file: skip it on resume; the engine refuses it when a task the
            # checkpoint trained held the file (the dataset's per-task identity), and results.json lists it
            state = "done" if folder.is_finished() else "resumable"
        else:
            raise OutputError(
                f"--resume: overrides would change the experiment ({', '.join(exc.changed)}); only "
                f"{', '.join(sorted(RUNTIME_KEYS))} (and data.skip_bad=true) may change. Start a new run instead."
            ) from exc
    if state == "done":
        return None
    check_resumable(run_dir)
    return planned
