"""`cifar100`: CIFAR-100 (100 classes, 50,000 train / 10,000 test images of 32 px), held in memory.

Files: ``<root>/cifar-100-python/{train,test,meta}`` as extracted from
https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz. ``data.root`` defaults to
``$SR2LORA_DATA`` or ``~/.cache/sr2lora/data`` (torchvision's convention: the root holds
``cifar-100-python/``; pointing ``data.root`` at ``cifar-100-python`` itself also works). With
``data.download=true`` missing or corrupted files are fetched by ``torchvision.datasets.CIFAR100(download=True)``
(which checks the archive's md5); otherwise a missing file fails at once with the expected path.

Labels are CIFAR's fine labels (classes in alphabetical order, as every CIL paper uses them); class names come
from ``meta``'s ``fine_label_names`` with ``_`` shown as a space.

Why not read through ``torchvision.datasets.CIFAR100``: its loader can only accept files whose md5 equals the
official ones, so it cannot be exercised on small files written in the same format. This module reads the same
pickles the same way (``pickle.load(..., encoding="latin1")``, ``data`` reshaped (N,3,32,32) -> NHWC) and
checks the same md5 sums (taken from torchvision's class, :data:`EXPECTED_MD5`), so a real copy is verified
exactly as torchvision would. The pickles are trusted input, as in torchvision.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torchvision.datasets import CIFAR100

from .base import ArrayImages, DataError, DatasetBundle
from .folders import absolute, default_data_root
from .registry import register_dataset

if TYPE_CHECKING:
    from ..config import DataConfig

CIFAR_DIR = CIFAR100.base_folder  # "cifar-100-python"
CIFAR_URL = CIFAR100.url
# md5 of the extracted files, from torchvision (the same check torchvision's loader makes).
EXPECTED_MD5: dict[str, str] = {
    CIFAR100.train_list[0][0]: CIFAR100.train_list[0][1],
    CIFAR100.test_list[0][0]: CIFAR100.test_list[0][1],
    CIFAR100.meta["filename"]: CIFAR100.meta["md5"],
}


def cifar_root(cfg: DataConfig) -> Path:
    """The folder holding ``cifar-100-python/``: ``data.root`` (or its parent if it is that folder) or default."""
    root = absolute(cfg.root if cfg.root else default_data_root())
    if root.name == CIFAR_DIR and not (root / CIFAR_DIR).is_dir():
        return root.parent
    return root


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _problems(folder: Path) -> tuple[list[str], list[str]]:
    """(missing file names, files whose md5 differs from :data:`EXPECTED_MD5`)."""
    missing = [n for n in EXPECTED_MD5 if not (folder / n).is_file()]
    bad = [n for n, md5 in EXPECTED_MD5.items() if n not in missing and _md5(folder / n) != md5]
    return missing, bad


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR python-version pickle (a dict), loaded as torchvision does."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"cifar100: cannot read {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"cifar100: {path} is not a CIFAR pickle (got {type(obj).__name__})")
    return obj


def read_cifar_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,32,32,3), fine labels) from the ``train`` or ``test`` pickle."""
    obj = read_cifar_pickle(path)
    if "data" not in obj or "fine_labels" not in obj:
        raise DataError(f"cifar100: {path} lacks 'data' or 'fine_labels'")
    data = np.asarray(obj["data"], dtype=np.uint8)
    labels = np.asarray(obj["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"cifar100: {path}: data {data.shape} / {len(labels)} labels, expected (N, 3072) / N")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


@register_dataset("cifar100")
def build_cifar100(cfg: DataConfig) -> DatasetBundle:
    """CIFAR-100 from ``<root>/cifar-100-python/``; downloads via torchvision only if ``data.download``."""
    root = cifar_root(cfg)
    folder = root / CIFAR_DIR
    missing, bad = _problems(folder)
    downloaded = False
    if missing or bad:
        if not cfg.download:
            names = ",".join(EXPECTED_MD5)
            if missing:
                what = f"missing {', '.join(str(folder / n) for n in missing)}"
            else:
                what = f"md5 mismatch (corrupted or not the official files): {', '.join(str(folder / n) for n in bad)}"
            raise DataError(
                f"cifar100: {what}; expected {folder}/{{{names}}}. Set data.download=true to fetch {CIFAR_URL} "
                f"into {root}, or extract that archive there yourself (data.root={root})"
            )
        try:
            CIFAR100(str(root), train=True, download=True)
        except Exception as exc:  # network errors, md5 mismatch of the archive, ...
            raise DataError(f"cifar100: download of {CIFAR_URL} into {root} failed: {exc}") from exc
        downloaded = True
        missing, bad = _problems(folder)
        if missing or bad:
            raise DataError(
                f"cifar100: after download, {folder} still lacks or fails md5 for {missing + bad}"
            )
    train_x, train_y = read_cifar_split(folder / "train")
    test_x, test_y = read_cifar_split(folder / "test")
    meta = read_cifar_pickle(folder / "meta")
    if "fine_label_names" not in meta:
        raise DataError(f"cifar100: {folder / 'meta'} lacks 'fine_label_names'")
    names = [str(n).replace("_", " ") for n in meta["fine_label_names"]]
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DataError(f"cifar100: {split} labels outside 0..{len(names) - 1}")
    return DatasetBundle(
        train=ArrayImages(train_x, train_y, "cifar100/train"),
        test=ArrayImages(test_x, test_y, "cifar100/test"),
        class_names=names,
        info={
            "source": f"CIFAR-100 python version ({CIFAR_URL})" + (", downloaded now" if downloaded else ""),
            "root": str(folder),
            "split": "official train/test",
            "md5_verified": dict(EXPECTED_MD5),
            "num_classes": len(names),
            "train": len(train_y),
            "test": len(test_y),
        },
    )
