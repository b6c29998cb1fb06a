"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every write goes to a temporary file in the target's folder (same file system, so the final ``os.replace`` is
an atomic rename), is flushed and fsynced, and is renamed onto the target; if anything fails before the
rename the temporary file is removed and the target is untouched. The temporary file is created with
``O_CREAT | O_EXCL`` and mode 0o666, so the kernel applies the umask and the result has the permissions an
ordinary ``open(path, "w")`` would give (``tempfile.mkstemp`` would make it private, 0o600). Its name
``.<name>.tmp-<random><suffix>`` keeps the target's suffix, for writers that look at it (``numpy.save`` adds
``.npy`` to other names, matplotlib picks the format from it).

- :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json` for data in memory;
- :func:`atomic_open` for writers that want a file object (``csv``, ``json.dump``);
- :func:`atomic_path` for writers that want a path (``safetensors.torch.save_file``, ``numpy.save``,
  ``onnx.save``, ``savefig``);
- :func:`atomic_paths` for several files that must change together (all old or all new).

Replacing a whole folder (the checkpoint) is a different protocol; see :mod:`sr2lora.runs.checkpoint`.
:func:`save_safetensors` writes a safetensors file whose I/O failures (a full disk) are ``OSError`` with the
errno and the path, as every other write's are: safetensors raises its own ``SafetensorError`` instead.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Errors of a write that fails for lack of room or rights: reported as a message naming the file, not a traceback.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})


# The name of a temporary file of this module (and of temporary folders made with the same prefix): what a
# process killed mid-write leaves behind, removed by the next resume (sr2lora.runs.checkpoint.clean_partial).
_TEMP_NAME = re.compile(r"^\..+\.tmp-[A-Za-z0-9_]{8}")


def leftover_temps(folder: str | Path) -> list[Path]:
    """The temporary files (and folders) of atomic writes in ``folder`` (not below it) that a killed process left."""
    try:
        return sorted(p for p in Path(folder).iterdir() if _TEMP_NAME.match(p.name))
    except OSError:
        return []


def temp_prefix(path: str | Path) -> str:
    """The name prefix of ``path``'s temporary files (for ``tempfile.mkdtemp(prefix=...)`` beside it)."""
    return f".{Path(path).name}.tmp-"


def _new_temp(path: Path) -> tuple[int, Path]:
    """Create an empty, unique temporary file beside ``path``; (open fd, its path)."""
    for _ in range(100):
        tmp = path.with_name(f"{temp_prefix(path)}{secrets.token_hex(4)}{path.suffix}")
        try:
            return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a unique temporary file for {path.name}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill; on a clean exit it replaces ``path``.

    The temporary file exists (empty) when the block starts; the writer may overwrite or recreate it. When
    the block raises, the file is removed and ``path`` keeps its old content (or stays absent).
    """
    path = Path(path)
    fd, tmp = _new_temp(path)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing (``"w"`` or ``"wb"``) that only replaces ``path`` when the block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = _new_temp(path)
    try:
        binary = mode == "wb"
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else newline) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` (``encoding``, newlines written as given) atomically."""
    with atomic_open(path, "w", encoding=encoding, newline="", fsync=fsync) as fh:
        fh.write(text)


def json_safe(data: Any) -> Any:
    """``data`` with every NaN/inf float replaced by None: JSON has no NaN, and a file holding one is not JSON.

    What remains after a run stops on any diverged stage are undefined values (an accuracy over zero test
    images); the documents say why next to them (e.g. ``empty_eval_tasks`` in results.json).
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` as JSON (UTF-8) atomically: the one JSON writer of the package.

    Non-finite floats are written as null (:func:`json_safe`), so the file is always valid JSON. The text is
    built before the temporary file is created, so data that cannot be written leaves nothing."""
    atomic_write_text(path, json.dumps(json_safe(data), indent=indent, allow_nan=False), fsync=fsync)


_OS_ERROR = re.compile(r"os error (\d+)")


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file(tensors, path)``, with an I/O failure raised as ``OSError(errno, strerror,
    path)`` (safetensors raises ``SafetensorError("... No space left on device (os error 28)")``, which no caller
    can tell from a bad tensor). Combine with :func:`atomic_path` for an atomic write."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as exc:  # safetensors' error type is not importable under a stable name
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered when the block ends) where the platform allows it."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def atomic_paths(paths: Sequence[str | Path], *, fsync: bool = True) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together (exported weights and their sidecar, a report's files).

    Yields one temporary path per target for the writer to fill. Only when the block succeeds are they renamed onto
    their targets, one right after another with SIGINT/SIGTERM held back, so an interrupt never leaves new files
    beside old ones; when the block raises (a full disk), every temporary file is removed and every target keeps
    its old content."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            fd, tmp = _new_temp(target)
            os.close(fd)
            temps.append(tmp)
        yield list(temps)
        if fsync:
            for tmp in temps:
                _fsync_file(tmp)
        with _signals_held():
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def move_into(staging: str | Path, target: str | Path) -> list[Path]:
    """Move every file of the folder ``staging`` into ``target`` (replacing files of the same name), one rename
    right after another with SIGINT/SIGTERM held back, then remove ``staging``: files written together (a report)
    appear together. Both folders must be on one file system (``staging`` made inside ``target``)."""
    import shutil

    staging, target = Path(staging), Path(target)
    moved = []
    with _signals_held():
        for f in sorted(staging.iterdir()):
            os.replace(f, target / f.name)
            moved.append(target / f.name)
    shutil.rmtree(staging, ignore_errors=True)
    return moved
