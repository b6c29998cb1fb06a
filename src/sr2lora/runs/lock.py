"""One process per run folder: an exclusive lock file ``RUN/.sr2lora.lock`` holding the owner's pid and host.

``sr2lora run``, ``run --resume``, ``demo`` and ``sweep`` hold the lock of every run folder they write while
they write it. The file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems), so of two runs
started at once into the same ``--out`` exactly one gets it; the other stops before writing anything, naming
the owner's pid and host. The lock is removed when the run ends (finished, failed or interrupted).

A lock left by a process that no longer exists (killed with SIGKILL, a crashed machine) is *stale*: on the
same host the pid is checked with ``os.kill(pid, 0)``; a stale lock is named in a one-line note and taken
over, so the run can be resumed. A lock from another host cannot be checked; it is refused with the path to
remove once that run is known to be gone.

Under torchrun only rank 0 (the process that writes files) takes the lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import OutputError
from .folder import RunFolder, check_output_writable

LOCK_NAME = RunFolder.LOCK


def _owner(path: Path) -> dict | None:
    """The lock file's {pid, host, started} or None when it is unreadable (being written, or damaged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create(path: Path) -> bool:
    """Create the lock file atomically with our pid and host; False when it already exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class FolderInUse(OutputError):
    """Another live process (or one on another host) holds the run folder's lock; ``holder`` says which."""

    def __init__(self, message: str, owner: dict) -> None:
        super().__init__(message)
        host = owner.get("host")
        self.holder = (f"pid {owner.get('pid', '?')}" + (f" on {host}" if host != socket.gethostname() else "")
                       + (f", started {owner['started']}" if owner.get("started") else ""))


def owner_of(run_dir: str | Path) -> dict | None:
    """{pid, host, started} of the process holding ``run_dir``'s lock, when it is alive (or on another host, where
    that cannot be checked); None when the folder is free or its lock is stale."""
    path = RunFolder(run_dir).lock_file
    owner = _owner(path) if path.is_file() else None
    if owner is None:
        return None
    if owner.get("host") != socket.gethostname() or pid_alive(owner["pid"]):
        return owner
    return None


def _refuse_live_owner(run_dir: Path, path: Path, owner: dict) -> None:
    """FolderInUse naming the owner when the lock belongs to another live process (or another host)."""
    pid, host = owner["pid"], owner.get("host")
    if host != socket.gethostname():
        raise FolderInUse(
            f"{run_dir}: the run folder is in use by pid {pid} on host {host} (lock {path}); wait for it, or "
            f"if that run is gone remove {path}", owner
        )
    if pid_alive(pid) and pid != os.getpid():
        raise FolderInUse(
            f"{run_dir}: the run folder is in use by another sr2lora process (pid {pid}, started "
            f"{owner.get('started', '?')}); two runs into one folder would overwrite each other's results. "
            f"Wait for it to end or choose another --out (if pid {pid} is no sr2lora run, remove {path})", owner
        )


def check_not_in_use(run_dir: str | Path) -> None:
    """OutputError when another live process holds ``run_dir``'s lock (a stale lock passes: it is taken over)."""
    path = Path(run_dir) / LOCK_NAME
    owner = _owner(path) if path.is_file() else None
    if owner is not None and _is_writer():
        _refuse_live_owner(Path(run_dir), path, owner)


def acquire(run_dir: Path) -> Path:
    """Take ``run_dir``'s lock (creating the folder); OutputError naming the owner when another process has it."""
    path = Path(run_dir) / LOCK_NAME
    for _ in range(3):  # a stale lock removed between our tries by another process: try again
        if _create(path):
            return path
        owner = _owner(path)
        if owner is None:  # being written by a process that just created it, or damaged
            time.sleep(0.2)
            owner = _owner(path)
            if owner is None:
                raise OutputError(
                    f"{run_dir}: the run folder is locked ({path} exists but is unreadable); if no sr2lora process "
                    f"is using this folder, remove {path} and try again"
                )
        _refuse_live_owner(run_dir, path, owner)
        pid = owner["pid"]
        print(f"note: {run_dir}: removing the stale lock of pid {pid} (no longer running)", file=sys.stderr)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    raise OutputError(f"{run_dir}: could not take the run folder's lock {path}; another process keeps taking it")


def release(path: Path) -> None:
    """Remove our lock file (only if it is still ours)."""
    owner = _owner(path)
    if owner is not None and owner.get("pid") == os.getpid():
        try:
            path.unlink()
        except OSError:
            pass


def _is_writer() -> bool:
    """False for torchrun ranks other than 0 (they never write into the run folder)."""
    from ..core.distributed import launched_by_torchrun

    return not launched_by_torchrun() or os.environ.get("RANK", "0") == "0"


@contextmanager
def run_folder_lock(run_dir: str | Path, hint: str = "choose another with --out") -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block. Creates the folder (checked writable; ``hint`` ends the message when
    it is not) and, when the block fails and the folder was created here and is left empty, removes it again so a
    failed start leaves nothing."""
    run_dir = Path(run_dir)
    if not _is_writer():
        yield
        return
    created = not run_dir.exists()
    check_output_writable(run_dir, hint)
    try:
        path = acquire(run_dir)
    except BaseException:
        _remove_if_empty(run_dir, created)
        raise
    try:
        yield
    finally:
        release(path)
        _remove_if_empty(run_dir, created)


def _remove_if_empty(run_dir: Path, created: bool) -> None:
    if created:
        try:
            run_dir.rmdir()  # only succeeds when empty
        except OSError:  # not empty (something was written) or already gone: keep it as it is
            pass
