"""Loggers the trainer calls at named points of a run: small classes with one job each.

The caller chooses them (``Trainer(callbacks=...)``; :func:`sr2lora.launch.run_loggers` gives the run folder's own,
which :func:`sr2lora.launch.launch` passes). The trainer calls ``on_start(trainer, first_task)`` once the run's state
is restored, ``on_epoch(row, step)`` after every epoch (a ``metrics.csv`` row: task, epoch, lr, steps and mean
losses), ``on_task(trainer, t)`` after every task (accuracies are in ``trainer.tracker``) and ``close()`` at the
end, also after an error or an interrupt. A logger never stops a run: one that fails warns once and turns itself
off. Loggers that write files write them on the main process only. The drift tracker
(:class:`sr2lora.analysis.drift.DriftLog`) is one more logger of this kind.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_open, move_into, temp_prefix


class Callback:
    """Base: every hook does nothing."""

    def on_start(self, trainer: Any, first_task: int) -> None:
        """Before the first task this process trains (after a resume has restored the run's state)."""

    def on_epoch(self, row: dict[str, Any], step: int) -> None:
        """After an epoch: its ``metrics.csv`` row and the global epoch index."""

    def on_task(self, trainer: Any, t: int) -> None:
        """After task ``t`` has been trained, aligned, evaluated and checkpointed."""

    def close(self) -> None:
        """At the end of the run, also after an error or an interrupt; must not raise."""


class CSVLog(Callback):
    """``RUN/metrics.csv``: one row per epoch (rewritten whole after each task, so it always parses)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def on_start(self, trainer: Any, first_task: int) -> None:
        self.rows = trainer.csv_rows if trainer.dist.is_main else []  # the trainer's list (restored on resume)
        if first_task > 0:  # rebuilt from the checkpoint: a kill right after it left the file a task short
            self.write()

    def on_task(self, trainer: Any, t: int) -> None:
        self.write()

    def write(self) -> None:
        """Rewrite the file with every row so far (atomically)."""
        if not self.rows:
            return
        with atomic_open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)


class TensorBoardLog(Callback):
    """Scalars for TensorBoard in ``log_dir``; any failure warns once and turns the log off (a run never dies of it).

    Per epoch: the losses and learning rate at the global epoch index; per task: the accuracy on seen classes and
    each task's accuracy after task t (x = tasks learned). Written through after every task and at
    :meth:`close`, so an interrupted run keeps the scalars of the epochs it finished.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def on_start(self, trainer: Any, first_task: int) -> None:
        if not trainer.dist.is_main:
            return
        try:
            # what an interrupted attempt logged beyond the checkpoint is trained again: drop it, or TensorBoard
            # would show two points at those steps
            self.drop_after(len(trainer.csv_rows), first_task)
        except Exception as exc:  # an unreadable event file: keep training, with the old points
            warnings.warn(f"TensorBoard: could not drop the points logged after the checkpoint ({type(exc).__name__}: "
                          f"{exc}); they may show twice", stacklevel=2)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir))
        except ImportError as exc:  # tensorboard missing: keep training, and say which extra installs it
            from ..core.extras import install_hint

            self._fail(ImportError(f"{exc} (install it with `{install_hint('report')}`)"))
        except Exception as exc:  # the folder unwritable: keep training
            self._fail(exc)

    def drop_after(self, epochs: int, tasks: int) -> None:
        """Rewrite the event files without the points beyond ``epochs`` epochs (``train/*``, x = epoch index) and
        ``tasks`` tasks (``eval*``, x = tasks learned): those a run killed after its checkpoint had logged. The kept
        events go to one new file, which replaces the old ones."""
        files = sorted(self.log_dir.glob("events.out.tfevents.*")) if self.log_dir.is_dir() else []
        if not files:
            return
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        def beyond(event: Any) -> bool:
            tags = [v.tag for v in event.summary.value]
            return any((tag.startswith("train/") and event.step >= epochs) or (tag.startswith("eval")
                                                                               and event.step > tasks) for tag in tags)

        events = [e for f in files for e in EventFileLoader(str(f)).Load()]
        kept = [e for e in events if e.HasField("summary") and not beyond(e)]
        if len(kept) == sum(e.HasField("summary") for e in events):
            return
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix(self.log_dir), dir=self.log_dir.parent))
        try:
            writer = EventFileWriter(str(staging))
            for event in kept:
                writer.add_event(event)
            writer.close()
            move_into(staging, self.log_dir)
            for f in files:
                f.unlink(missing_ok=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _fail(self, exc: BaseException) -> None:
        warnings.warn(f"TensorBoard logging disabled: {type(exc).__name__}: {exc}", stacklevel=3)
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass

    def on_epoch(self, row: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        try:
            for key in ("loss", "ce", "reg", "lr"):
                if key in row:
                    self.writer.add_scalar(f"train/{key}", float(row[key]), step)
            self.writer.add_scalar("train/task", int(row.get("task", 0)) + 1, step)
        except Exception as exc:
            self._fail(exc)

    def on_task(self, trainer: Any, t: int) -> None:
        self.task(t, trainer.tracker.curve[-1], trainer.tracker.matrix[-1])

    def task(self, t: int, accuracy: float, per_task: list[float | None]) -> None:
        """Accuracy on all seen classes and per task after task t."""
        if self.writer is None:
            return
        try:
            self.writer.add_scalar("eval/accuracy_seen", float(accuracy), t + 1)
            for j, a in enumerate(per_task[: t + 1]):
                if a is not None and math.isfinite(a):
                    self.writer.add_scalar(f"eval_task/task_{j + 1:02d}", float(a), t + 1)
            self.writer.flush()
        except Exception as exc:
            self._fail(exc)

    def close(self) -> None:
        """Flush and close (safe to call twice)."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except Exception as exc:
            self._fail(exc)
        self.writer = None
