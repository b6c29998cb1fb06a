"""Atomic per-task checkpoints: tensors in safetensors, everything else in JSON, never pickle.

Layout of a run folder::

    RUN/config.yaml          resolved config (written before training)
    RUN/checkpoint/          the last complete task: model.safetensors, stats.safetensors,
                             method.safetensors, state.json (task index, metrics so far)
    RUN/results.json         written when the run finishes

A checkpoint is written into ``checkpoint.tmp-*`` (files fsynced), then swapped in with ``os.replace``; the
folder that ``state.json`` sits in is therefore always complete. A crash mid-write leaves only a temp folder,
which the next resume removes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CKPT_DIR = "checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not belong to this run."""


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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a fsynced temp file and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_checkpoint(run_dir: Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> Path:
    """Atomically replace ``run_dir/checkpoint`` with ``{name}.safetensors`` files and ``state.json``."""
    run_dir = Path(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{CKPT_DIR}.tmp-", dir=run_dir))
    try:
        for name, group in tensors.items():
            target = tmp / f"{name}.safetensors"
            save_file(_contiguous(group) if group else {"_empty": torch.zeros(1)}, str(target))
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        write_json_atomic(tmp / "state.json", state)
        _fsync_dir(tmp)
        final = run_dir / CKPT_DIR
        old = None
        if final.exists():
            old = run_dir / f"{CKPT_DIR}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial(run_dir: Path) -> None:
    """Remove temp folders left by a crash during a checkpoint write; restore a swapped-out checkpoint."""
    run_dir = Path(run_dir)
    final = run_dir / CKPT_DIR
    for p in run_dir.glob(f"{CKPT_DIR}.old-*"):
        if not final.exists():
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p in run_dir.glob(f"{CKPT_DIR}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
    """(tensor groups, state) of the last complete task, or None when the run has no checkpoint yet."""
    ckpt = Path(run_dir) / CKPT_DIR
    state_file = ckpt / "state.json"
    if not state_file.exists():
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{state_file}: unreadable checkpoint state ({exc})") from exc
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        try:
            group = load_file(str(f))
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            raise CheckpointError(f"{f}: not a valid safetensors file ({exc}); the checkpoint is damaged") from exc
        group.pop("_empty", None)
        groups[f.stem] = group
    return groups, state
