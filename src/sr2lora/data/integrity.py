"""Unreadable image files: found before training, then reported (default) or skipped (``data.skip_bad``).

Every file of a :class:`~sr2lora.data.base.FileImages` split is opened, verified and decoded by PIL
(:func:`sr2lora.data.folders.check_readable`: structure, PNG checksums, and the compressed data, so a truncated
JPEG is found here and not when its task loads it) before the model is built. By default any bad file stops the run with a :class:`DataError` listing up to 10 paths and the
count; with ``data.skip_bad=true`` they are dropped (with a warning) and listed in ``results.json`` as
``skipped_files``. In-memory datasets (``ArrayImages``) have nothing to check.
"""

from __future__ import annotations

import warnings

import numpy as np

from .base import DataError, DatasetBundle, FileImages, LabeledImages
from .folders import check_readable

SHOW = 10  # paths shown in messages


def _is_plain_files(images: LabeledImages) -> bool:
    # Subclasses with their own `load` may not be PIL-readable files (e.g. rendered vector art).
    return isinstance(images, FileImages) and type(images).load is FileImages.load


def _keep(images: FileImages, bad: set[str]) -> FileImages:
    keep = [i for i, p in enumerate(images.paths) if p not in bad]
    return FileImages([images.paths[i] for i in keep], np.asarray(images.targets)[keep])


def _listing(paths: list[str]) -> str:
    shown = "\n  ".join(paths[:SHOW])
    more = f"\n  ... and {len(paths) - SHOW} more" if len(paths) > SHOW else ""
    return f"\n  {shown}{more}"


def drop_unreadable(bundle: DatasetBundle, skip_bad: bool) -> tuple[DatasetBundle, list[str]]:
    """(bundle without unreadable files, their paths). Raises DataError if any is found and not ``skip_bad``,
    or if skipping leaves a class without training images."""
    splits = {"train": bundle.train, "test": bundle.test}
    reasons: dict[str, str] = {}
    bad = {name: check_readable(images, reasons=reasons) if _is_plain_files(images) else []
           for name, images in splits.items()}
    found = bad["train"] + bad["test"]
    if not found:
        return bundle, []
    if not skip_bad:
        shown = [f"{p} ({reasons[p]})" if p in reasons else p for p in found]
        raise DataError(
            f"{len(found)} image file(s) cannot be read (corrupt or not images):{_listing(shown)}\n"
            "Fix or remove them, or set data.skip_bad=true to skip them (they are then listed in the run's results "
            "as skipped_files). A run interrupted on this data resumes after the same fix, or with data.skip_bad=true "
            "added to `sr2lora run --resume`, as long as the files belong to tasks it has not trained yet."
        )
    train = _keep(bundle.train, set(bad["train"])) if bad["train"] else bundle.train
    test = _keep(bundle.test, set(bad["test"])) if bad["test"] else bundle.test
    emptied = sorted(set(range(bundle.num_classes)) - set(np.unique(train.targets).tolist()))
    if emptied:
        names = ", ".join(repr(bundle.class_names[c]) for c in emptied[:SHOW])
        raise DataError(
            f"data.skip_bad: after skipping {len(found)} unreadable file(s), class(es) {names} have no training "
            f"image left; skipped:{_listing(found)}"
        )
    warnings.warn(
        f"data.skip_bad: skipped {len(found)} unreadable image file(s) (listed in the run's results as skipped_files):"
        f"{_listing(found)}",
        stacklevel=2,
    )
    info = dict(bundle.info, skipped_files=len(found))
    for name, images in (("train", train), ("test", test)):
        if name in info and isinstance(info[name], int):
            info[name] = len(images)
    return DatasetBundle(train=train, test=test, class_names=bundle.class_names, info=info), found
