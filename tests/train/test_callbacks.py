"""The loggers a run's caller chooses: they see the run start, every epoch and task, and are closed however the
run ends, so an interrupted or failed run keeps what it logged (TensorBoard's buffered scalars included)."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import FAST
from sr2lora.config import load_config
from sr2lora.core.errors import TrainingError
from sr2lora.core.signals import Interrupted
from sr2lora.launch import launch
from sr2lora.runs.folder import RunFolder
from sr2lora.train.callbacks import Callback


class Recorder(Callback):
    """Records which hooks ran, in order; sends this process a real SIGTERM after epoch ``kill_after``."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.kill_after = kill_after
        self.calls: list[str] = []

    def on_start(self, trainer, first_task):
        self.calls.append(f"start:{first_task}")

    def on_epoch(self, row, step):
        self.calls.append(f"epoch:{step}")
        if self.kill_after is not None and step == self.kill_after:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_task(self, trainer, t):
        self.calls.append(f"task:{t}")

    def close(self):
        self.calls.append("close")


def tensorboard_steps(log_dir, tag: str) -> list[int]:
    """The steps of ``tag``'s scalars in the TensorBoard event files of ``log_dir``."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_a_sigterm_mid_run_closes_the_loggers_and_tensorboard_keeps_every_epoch(tmp_path):
    """Task 1 has 3 epochs, task 2 is stopped by SIGTERM after its second: the 5 finished epochs are in the event
    file although the last flush before the signal was at the end of task 1 (epochs 0-2): close() wrote 3 and 4."""
    cfg = load_config("smoke", [*FAST, "train.epochs=3", "train.precision=fp32"])
    out = tmp_path / "run"
    rec = Recorder(kill_after=4)
    with pytest.raises(Interrupted):
        launch(cfg, out, progress=False, callbacks=[rec])
    assert rec.calls == ["start:0", "epoch:0", "epoch:1", "epoch:2", "task:0", "epoch:3", "epoch:4", "close"]
    assert tensorboard_steps(RunFolder(out).tensorboard_dir, "train/loss") == [0, 1, 2, 3, 4]
    assert RunFolder(out).state_file.is_file() and not RunFolder(out).is_finished()  # task 1's checkpoint kept

    # resumed: the loggers start at task 2, and the run ends with every task logged and closed once
    rec2 = Recorder()
    launch(load_config(str(RunFolder(out).config_file)), out, resume=True, progress=False, callbacks=[rec2])
    assert rec2.calls[0] == "start:1" and rec2.calls[-1] == "close" and rec2.calls.count("close") == 1
    assert [c for c in rec2.calls if c.startswith("task")] == [f"task:{t}" for t in range(1, 5)]


def test_a_failing_run_closes_its_loggers(tmp_path):
    """A run that stops on an error (a diverging lr) still closes every logger, then reports the error."""
    cfg = load_config("smoke", [*FAST, "train.lr=1e30", "train.precision=fp32"])
    rec = Recorder()
    with pytest.raises(TrainingError, match="non-finite loss"):
        launch(cfg, tmp_path / "run", progress=False, callbacks=[rec])
    assert rec.calls[0] == "start:0" and rec.calls[-1] == "close"
