"""Stop a run cleanly on SIGINT / SIGTERM: finish the current step, keep the last complete checkpoint, exit.

``sr2lora run`` wraps the training in :func:`stop_on_signals`. The first signal only sets a flag; the engine
calls :func:`check_interrupt` between training steps, feature batches and tasks, which raises
:class:`Interrupted` once the flag is set. Nothing is written after that point, so the run folder holds the
last complete task's checkpoint (a checkpoint being written when the signal arrived is finished first, since
the flag is only looked at between steps). A second signal stops at once (the atomic checkpoint swap still
never leaves a partial checkpoint that looks complete). The command then exits with 128 + the signal number
(130 for SIGINT, 143 for SIGTERM) after printing how to resume.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested: int | None = None


class Interrupted(BaseException):
    """The run was asked to stop by a signal (a BaseException, so ``except Exception`` never swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.run_dir: object = None  # set by the CLI for its "resume with" message
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + signal number."""
        return 128 + self.signum


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask the running engine to stop at its next check (what the signal handler does)."""
    global _requested
    _requested = int(signum)


def stop_requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a stop was requested; a no-op otherwise (cheap, call it often)."""
    if _requested is not None:
        raise Interrupted(_requested)


def _handler(signum: int, frame: object) -> None:
    if _requested is not None:  # second signal: the user insists, stop now
        raise Interrupted(signum)
    request_stop(signum)


_depth = 0  # nested stop_on_signals blocks (a sweep's around each run's): only the outermost installs


@contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, ``signums`` request a clean stop instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere the block runs without them. A block inside
    another (a sweep starting each run through :func:`sr2lora.launch.launch`) keeps the outer handlers and a
    stop already requested.
    """
    global _requested, _depth
    if _depth > 0:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    _requested = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signums}
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = None
