"""The common shape of every dataset: labelled images, decoded lazily, plus class names.

A dataset builder returns a :class:`DatasetBundle` of two :class:`LabeledImages` (train, test) over the same
class list. Labels are the dataset's own class indices (0..C-1, classes sorted deterministically by the builder);
the scenario remaps them to the run's class order later. Nothing here knows about tasks, LoRA or transforms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import DataError
from .decode import open_rgb8


class LabeledImages:
    """A sequence of (PIL image, label) pairs with all labels known up front as ``targets``.

    Subclasses implement :meth:`load`; ``targets`` is an int64 array of length ``len(self)``.
    ``describe(i)`` names item i for error messages (a file path, or ``array[i]``).
    """

    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"item {index}"


class ArrayImages(LabeledImages):
    """Images held in memory as a uint8 array (N, H, W, 3) or (N, H, W)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int] | np.ndarray, name: str = "array") -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataError(f"{name}: expected uint8 images of shape (N,H,W[,3]), got {images.dtype} {images.shape}")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.images) != len(self.targets):
            raise DataError(f"{name}: {len(self.images)} images but {len(self.targets)} labels")
        self.name = name

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


class FileImages(LabeledImages):
    """Images stored as files on disk, decoded on access (safe to use from DataLoader workers)."""

    def __init__(self, paths: Sequence[str | Path], targets: Sequence[int] | np.ndarray) -> None:
        self.paths = [str(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.paths) != len(self.targets):
            raise DataError(f"{len(self.paths)} files but {len(self.targets)} labels")

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            return open_rgb8(path)  # regular files only; 16-bit and float images scaled, not clipped
        except DataError:
            raise
        except Exception as exc:  # PIL raises many types for corrupt files
            raise DataError(f"cannot read image {path}: {exc}") from exc

    def describe(self, index: int) -> str:
        return self.paths[index]


@dataclass
class DatasetBundle:
    """What a dataset builder returns: train and test images over one class list."""

    train: LabeledImages
    test: LabeledImages
    class_names: list[str]
    # Free-form facts written into the run's results (source, split rule, counts, checksums).
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DatasetBuilder = Callable[..., DatasetBundle]
