"""The identity of a run's dataset, recorded in the checkpoint and checked on resume.

A resume must continue on the dataset it started on. ``data.root`` (and ``$SR2LORA_DATA``) may change on
resume, because a dataset can be moved or copied; what may not change is the data. The identity is: the
dataset name, the resolved root, the class names, the per-split file counts and a sha256 over the file list
(each file's path relative to the root, its label and its size; for in-memory datasets the image bytes). A
moved identical copy has the same hash (paths are relative), so it is accepted with a note.

The identity also holds one hash per task over that task's training and evaluation items (after the split and
after unreadable files were skipped). Files of tasks the checkpoint has not trained yet may change on resume (a
damaged file replaced or skipped with ``data.skip_bad``): the run then ends exactly as an uninterrupted run on the
data as it is now would, since no trained task saw them; a note says which tasks changed. Any change to a trained
task's files, to the classes or to another dataset is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import CheckpointError
from .base import ArrayImages, DatasetBundle, FileImages, LabeledImages

if TYPE_CHECKING:
    from .run_data import RunData


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


class _Subset(LabeledImages):
    """``images`` restricted to ``indices`` (for hashing one task's items)."""

    def __init__(self, images: LabeledImages, indices: np.ndarray) -> None:
        self.images, self.indices = images, np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(images.targets, dtype=np.int64)[self.indices]

    def describe(self, index: int) -> str:
        return self.images.describe(int(self.indices[index]))


def _hash_items(h: Any, name: str, images: LabeledImages, indices: np.ndarray, root: str | None) -> None:
    """Hash ``images[indices]`` like :func:`_hash_split` hashes a whole split."""
    indices = np.asarray(indices, dtype=np.int64)
    if isinstance(images, FileImages):
        _hash_split(h, name, FileImages([images.paths[i] for i in indices], images.targets[indices]), root)
    elif isinstance(images, ArrayImages):
        h.update(f"split {name} {len(indices)}\n".encode())
        h.update(np.ascontiguousarray(images.images[indices]).tobytes())
        h.update(np.asarray(images.targets, dtype=np.int64)[indices].tobytes())
    else:
        _hash_split(h, name, _Subset(images, indices), root)


def _root_abs(bundle: DatasetBundle, root: str | None) -> str | None:
    root = bundle.info.get("root") or root
    return os.path.abspath(os.path.expanduser(str(root))) if root else None


def task_hashes(data: RunData, root: str | None) -> list[str]:
    """One sha256 per task of ``data``: its training and evaluation items (files and labels; image bytes for
    in-memory datasets), after the split and after skipped files were dropped."""
    root_abs = _root_abs(data.bundle, root)
    sc = data.scenario
    out = []
    for t in range(sc.num_tasks):
        lo, hi = sc.offsets[t], sc.offsets[t + 1]
        h = hashlib.sha256()
        for name, images, labels, base in (("train", data.bundle.train, data.train_labels, data.train_index),
                                           ("eval", data.eval_images, data.eval_labels, data.eval_index)):
            keep = base[(labels[base] >= lo) & (labels[base] < hi)]
            _hash_items(h, name, images, keep, root_abs)
        out.append(h.hexdigest())
    return out


def dataset_identity(dataset: str, bundle: DatasetBundle, root: str | None,
                     data: RunData | None = None) -> dict[str, Any]:
    """{name, root, classes, counts, files_sha256, tasks} of a built dataset (``root``: where it was read from;
    ``tasks``: :func:`task_hashes` of ``data``, the dataset seen through the run's scenario, when given)."""
    root_abs = _root_abs(bundle, root)
    h = hashlib.sha256()
    h.update("\n".join(bundle.class_names).encode("utf-8", "surrogateescape"))
    for name, images in (("train", bundle.train), ("test", bundle.test)):
        _hash_split(h, name, images, root_abs)
    out: dict[str, Any] = {
        "name": dataset,
        "root": str(Path(root_abs).resolve()) if root_abs else None,
        "classes": list(bundle.class_names),
        "counts": {"train": len(bundle.train), "test": len(bundle.test)},
        "files_sha256": h.hexdigest(),
    }
    if data is not None:
        out["tasks"] = task_hashes(data, root)
    return out


def check_same_dataset(run_dir: Path, recorded: dict[str, Any] | None, current: dict[str, Any],
                       trained: int | None = None) -> None:
    """Raise CheckpointError when ``current`` is not the dataset the checkpoint was written on; a moved copy
    with the same files passes with a note. With ``trained`` (the checkpoint's last task) and per-task hashes on
    both sides, changes confined to later tasks pass with a note. ``recorded`` None (an older checkpoint): nothing
    to check."""
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
    old_tasks, new_tasks = recorded.get("tasks"), current.get("tasks")
    same_classes = list(recorded.get("classes") or []) == current["classes"]
    if (trained is not None and same_classes and isinstance(old_tasks, list) and isinstance(new_tasks, list)
            and len(old_tasks) == len(new_tasks)):
        changed = [j for j, (a, b) in enumerate(zip(old_tasks, new_tasks)) if a != b]
        if changed and min(changed) > trained:
            print(f"note: task(s) {', '.join(str(j + 1) for j in changed)} have other files than when the run "
                  f"started (a file replaced, removed or skipped); the {trained + 1} task(s) in the checkpoint are "
                  f"unchanged, so the run continues on the data as it is now", file=sys.stderr)
            return
        trained_changed = [j + 1 for j in changed if j <= trained]
    else:
        trained_changed = []
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
    if trained_changed:
        changes.append(f"other files in task(s) {', '.join(map(str, trained_changed))}, which it has trained already")
    raise CheckpointError(
        f"{where} another dataset than data.root now gives ({'; '.join(changes)}); resuming would mix two "
        f"datasets. Point data.root (or SR2LORA_DATA) at the original dataset (only files of tasks not trained yet "
        f"may change), or start a new run"
    )
