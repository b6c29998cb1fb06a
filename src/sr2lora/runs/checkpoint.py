"""Atomic per-task checkpoints: tensors in safetensors, everything else in JSON, never pickle.

The folder's layout and its file names are :class:`sr2lora.runs.folder.RunFolder`'s: ``RUN/checkpoint/`` holds
one safetensors file per tensor group (model, stats, method, heads), ``state.json`` (scenario position, metrics
so far, the config's sha256, the dataset's identity) and ``manifest.json`` (every file's sha256, written last).

Nothing is pickled: loading uses ``safetensors.torch.load_file`` and ``json``, which cannot run code, so a
crafted file is refused as "not a valid safetensors file" rather than executed.

A checkpoint is written into ``checkpoint.tmp-*`` (files fsynced), then swapped in with ``os.replace``; the
folder that ``state.json`` sits in is therefore always complete. A crash mid-write leaves only a temp folder
(or, between the two renames, the previous checkpoint as ``checkpoint.old-*``), which the next resume removes
(or puts back). A failed write (disk full, permissions) raises :class:`CheckpointError` and removes the temp
folder; the previous checkpoint stays as it was.

Resume refuses a run whose ``config.yaml`` no longer has the sha256 recorded in ``state.json``, and a
checkpoint with a file missing or changed against ``manifest.json``.

Random state is not saved, by design: all randomness of task t (LoRA initialisation, data order and
augmentation, classifier-alignment sampling) is seeded from (seed, t) at the start of the task
(:func:`sr2lora.core.seeding.task_seed`), so resuming from the checkpoint of task t−1 reproduces an uninterrupted
run exactly (tested with runs killed mid-task and mid-checkpoint).

Test hook: with ``SR2LORA_TEST_PAUSE_IN_CHECKPOINT=<seconds>`` in the environment, :func:`save_checkpoint`
sleeps that long after the temp folder is complete and before the swap, so a test can kill the process
mid-write. It changes nothing else and is unset in normal use.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..core.atomic import atomic_write_json
from ..core.cache import file_sha256
from ..core.errors import CheckpointError
from .folder import RunFolder

PAUSE_ENV = "SR2LORA_TEST_PAUSE_IN_CHECKPOINT"
STATE_KEYS = ("task", "matrix", "curve", "counts", "task_seconds")  # what a resume needs from state.json
# Errors of a write that fails for lack of room or rights: reported as a CheckpointError, not a traceback.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})



def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_checkpoint(run_dir: Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> Path:
    """Atomically replace ``run_dir``'s checkpoint with one safetensors file per group and the state JSON."""
    folder = RunFolder(run_dir)
    run_dir = folder.path
    tmp = Path(tempfile.mkdtemp(prefix=f"{folder.CHECKPOINT}.tmp-", dir=run_dir))
    try:
        for name, group in tensors.items():
            target = folder.group_file(name, tmp)
            save_file(_contiguous(group) if group else {"_empty": torch.zeros(1)}, str(target))
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        atomic_write_json(tmp / folder.STATE, state)
        write_manifest(tmp)  # last: every file above with its sha256
        _fsync_dir(tmp)
        pause = os.environ.get(PAUSE_ENV)
        if pause:  # test-only hook (see the module docstring)
            time.sleep(float(pause))
        final = folder.checkpoint_dir
        old = None
        if final.exists():
            old = run_dir / f"{folder.CHECKPOINT}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            kept = "the previous checkpoint is intact" if folder.checkpoint_dir.exists() else "no checkpoint yet"
            raise CheckpointError(
                f"cannot write the checkpoint into {run_dir}: {exc.strerror} ({exc.filename or run_dir}); "
                f"{kept}. Free space or fix permissions, then continue with `sr2lora run --resume {run_dir}`"
            ) from exc
        raise


MANIFEST = RunFolder.MANIFEST


def write_manifest(ckpt: Path) -> None:
    """Write ``ckpt/manifest.json``: {file name: sha256} of every file in the checkpoint folder."""
    files = {f.name: file_sha256(f) for f in sorted(ckpt.iterdir()) if f.is_file() and f.name != MANIFEST}
    atomic_write_json(ckpt / MANIFEST, {"files": files})


def verify_manifest(ckpt: Path) -> None:
    """Raise CheckpointError unless every file the manifest lists is present with its recorded sha256.

    A checkpoint is one unit: resuming from one with a missing or altered file would mix two states (or
    silently start a method's state from scratch)."""
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt}: no {MANIFEST} (the list of the checkpoint's files, written last); the checkpoint is "
            f"incomplete, was altered or was written by an older sr2lora. Start a new run with another --out"
        )
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({exc}); the checkpoint is damaged") from exc
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: unreadable checkpoint manifest (no file list); the checkpoint is damaged")
    for name, expected in sorted(files.items()):
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(
                f"{f}: missing from the checkpoint (listed in {MANIFEST}); the checkpoint cannot be resumed "
                f"without it. Restore the file or start a new run with another --out"
            )
        if file_sha256(f) != expected:
            raise CheckpointError(
                f"{f}: changed since the checkpoint was written (sha256 differs from {MANIFEST}); the checkpoint "
                f"cannot be resumed. Restore the file or start a new run with another --out"
            )


def clean_partial(run_dir: Path) -> None:
    """Remove temp folders left by a crash during a checkpoint write; restore a swapped-out checkpoint."""
    folder = RunFolder(run_dir)
    final = folder.checkpoint_dir
    for p in folder.swapped_checkpoints():
        if not final.exists():
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p in folder.temp_checkpoints():
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(
    run_dir: Path, verify: bool = False
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
    """(tensor groups, state) of the last complete task, or None when the run has no checkpoint yet.

    ``verify=True`` (resume) also checks every file against ``manifest.json`` (:func:`verify_manifest`)."""
    folder = RunFolder(run_dir)
    ckpt, state_file = folder.checkpoint_dir, folder.state_file
    if not state_file.exists():
        if ckpt.is_dir() and any(ckpt.iterdir()):  # the atomic swap never leaves this: files were removed
            raise CheckpointError(f"{ckpt}: incomplete checkpoint (no {folder.STATE}); the run folder was altered")
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{state_file}: unreadable checkpoint state ({exc})") from exc
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{state_file}: not a sr2lora checkpoint state (lacks {', '.join(missing)})")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        try:
            group = load_file(str(f))
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            raise CheckpointError(f"{f}: not a valid safetensors file ({exc}); the checkpoint is damaged") from exc
        group.pop("_empty", None)
        groups[f.stem] = group
    if verify:  # after loading, so a file that is not safetensors at all is named as such first
        verify_manifest(ckpt)
    return groups, state


def read_group(run_dir: Path, group: str) -> dict[str, torch.Tensor]:
    """One tensor group of the checkpoint on disk, or {} when it is missing or unreadable (used for the head
    snapshots, whose loss only costs older snapshots, never the run)."""
    path = RunFolder(run_dir).group_file(group)
    if not path.is_file():
        return {}
    try:
        return load_file(str(path))
    except Exception:
        return {}


def check_resumable(run_dir: Path) -> None:
    """Before any work on ``--resume``: config.yaml unchanged and, when there is a checkpoint, its files intact
    (``checkpoint.old-*`` left by a crash mid-swap is put back first, as the resume itself would)."""
    run_dir = Path(run_dir)
    check_config_unchanged(run_dir)
    folder = RunFolder(run_dir)
    ckpt = folder.checkpoint_dir
    if not ckpt.exists() and folder.swapped_checkpoints():
        return  # the engine restores the swapped-out checkpoint and verifies it then
    load_checkpoint(run_dir, verify=True)  # a file that is not safetensors is named as such, then the manifest


def check_config_unchanged(run_dir: Path, state: dict[str, Any] | None = None) -> None:
    """Raise CheckpointError if ``run_dir/config.yaml`` differs from the one the checkpoint was written with.

    ``state`` defaults to the checkpoint's ``state.json``; no checkpoint or no recorded hash: nothing to check.
    """
    run_dir = Path(run_dir)
    if state is None:
        state_file = RunFolder(run_dir).state_file
        if not state_file.is_file():
            return
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{state_file}: unreadable checkpoint state ({exc})") from exc
    expected = state.get("config_sha256") if isinstance(state, dict) else None
    if not expected:
        return
    cfg_file = RunFolder(run_dir).config_file
    actual = file_sha256(cfg_file) if cfg_file.is_file() else None
    if actual != expected:
        raise CheckpointError(
            f"{cfg_file} was changed after the checkpoint was written (sha256 {str(actual)[:12]}… != recorded "
            f"{expected[:12]}…); resuming would mix two experiments. Restore the file, or start a new run with "
            f"`sr2lora run --preset {cfg_file} --out NEW_DIR`. Only where it runs may change on resume, as "
            f"overrides (e.g. train.device=cpu data.root=...)"
        )
