"""The identity of a run's dataset, recorded in the checkpoint and checked on resume.

A resume must continue on the dataset it started on. ``data.root`` (and ``$SR2LORA_DATA``) may change on
resume, because a dataset can be moved or copied; what may not change is the data. The identity is: the
dataset name, the resolved root, the class names, the per-split file counts and a sha256 over the file list
(each file's path relative to the root, its label and its size; for in-memory datasets the image bytes). A
moved identical copy has the same hash (paths are relative), so it is accepted with a note; anything else that
differs is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import CheckpointError
from .base import ArrayImages, DatasetBundle, FileImages, LabeledImages


def _hash_split(h: Any, name: str, images: LabeledImages, root: str | None) -> None:
    h.update(f"split {name} {len(images)}\n".encode())
    targets = np.asarray(images.targets, dtype=np.int64)
    if isinstance(images, FileImages):
        for path, label in zip(images.paths, targets.tolist()):
            rel = os.path.relpath(path, root) if root else os.path.basename(path)
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            h.update(f"{rel}\t{label}\t{size}\n".encode("utf-8", "surrogateescape"))
    elif isinstance(images, ArrayImages):
        h.update(np.ascontiguousarray(images.images).tobytes())
        h.update(targets.tobytes())
    else:  # another kind of dataset: its labels and how it names its items
        h.update(targets.tobytes())
        for i in range(len(images)):
            h.update(f"{images.describe(i)}\n".encode("utf-8", "surrogateescape"))


def dataset_identity(dataset: str, bundle: DatasetBundle, root: str | None) -> dict[str, Any]:
    """{name, root, classes, counts, files_sha256} of a built dataset (``root``: where it was read from)."""
    root = bundle.info.get("root") or root
    root_abs = os.path.abspath(os.path.expanduser(str(root))) if root else None
    h = hashlib.sha256()
    h.update("\n".join(bundle.class_names).encode("utf-8", "surrogateescape"))
    for name, images in (("train", bundle.train), ("test", bundle.test)):
        _hash_split(h, name, images, root_abs)
    return {
        "name": dataset,
        "root": str(Path(root_abs).resolve()) if root_abs else None,
        "classes": list(bundle.class_names),
        "counts": {"train": len(bundle.train), "test": len(bundle.test)},
        "files_sha256": h.hexdigest(),
    }


def check_same_dataset(run_dir: Path, recorded: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Raise CheckpointError when ``current`` is not the dataset the checkpoint was written on; a moved copy
    with the same files passes with a note. ``recorded`` None (an older checkpoint): nothing to check."""
    if not isinstance(recorded, dict):
        return
    where = f"{run_dir}: the checkpoint was written on"
    if recorded.get("name") != current["name"]:
        raise CheckpointError(f"{where} data.dataset={recorded.get('name')}, not {current['name']}; resume "
                              f"with the same dataset or start a new run")
    if recorded.get("files_sha256") == current["files_sha256"]:
        if recorded.get("root") != current["root"]:
            print(f"note: the dataset moved from {recorded.get('root')} to {current['root']}; same classes and "
                  f"files, continuing", file=sys.stderr)
        return
    changes = []
    if recorded.get("root") != current["root"]:
        changes.append(f"root {recorded.get('root')} -> {current['root']}")
    old_classes, new_classes = list(recorded.get("classes") or []), current["classes"]
    if old_classes != new_classes:
        gone = sorted(set(old_classes) - set(new_classes))
        added = sorted(set(new_classes) - set(old_classes))
        detail = ", ".join(filter(None, [f"missing now: {', '.join(gone[:10])}" if gone else "",
                                         f"new: {', '.join(added[:10])}" if added else ""])) or "another order"
        changes.append(f"classes ({len(old_classes)} -> {len(new_classes)}; {detail})")
    old_counts = recorded.get("counts") or {}
    for split, n in current["counts"].items():
        if old_counts.get(split) != n:
            changes.append(f"{split} files {old_counts.get(split)} -> {n}")
    if not [c for c in changes if not c.startswith("root")]:
        changes.append("the same counts but other files (renamed, replaced or resized images)")
    raise CheckpointError(
        f"{where} another dataset than data.root now gives ({'; '.join(changes)}); resuming would mix two "
        f"datasets. Point data.root (or SR2LORA_DATA) at the original dataset, or start a new run"
    )
