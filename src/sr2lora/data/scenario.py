"""Class order, task splits and label remapping: which classes each task holds, in the run's label space.

Labels seen by the model are *positions in the class order*: the class ``class_order[i]`` gets label ``i``, so
task t owns the contiguous label range ``[offsets[t], offsets[t+1])``. Per-task train/test views are torch
Datasets that apply a transform and return ``(image, label, index)``.

A training view is given a seed: each item's random augmentation is then drawn from a generator seeded with
(seed, epoch, dataset index) alone, so it does not depend on which process loads the item (the main process or
any of ``data.num_workers`` workers), on the order items are loaded, or on what else drew random numbers. A
run therefore computes the same numbers with any worker count, fresh or resumed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ConfigError, ScenarioConfig
from .base import LabeledImages


@dataclass
class Scenario:
    """A class-incremental sequence over ``num_classes`` classes."""

    class_order: list[int]  # label i = original class class_order[i]
    offsets: list[int]  # task t owns labels [offsets[t], offsets[t+1])

    @property
    def num_tasks(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def task_size(self, t: int) -> int:
        return self.offsets[t + 1] - self.offsets[t]

    def seen_classes(self, t: int) -> int:
        """Number of labels known after task t (0-based)."""
        return self.offsets[t + 1]

    def remap(self, targets: np.ndarray) -> np.ndarray:
        """Original class ids → run labels."""
        lut = np.empty(len(self.class_order), dtype=np.int64)
        lut[np.asarray(self.class_order)] = np.arange(len(self.class_order))
        return lut[np.asarray(targets)]

    def task_of_labels(self, labels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Task index of each run label."""
        return np.searchsorted(np.asarray(self.offsets[1:]), np.asarray(labels), side="right")


def class_order(num_classes: int, order: str | list, seed: int) -> list[int]:
    """natural, seeded (``np.random.seed(seed); np.random.permutation(C)``, the field's convention) or a list."""
    if order == "natural":
        return list(range(num_classes))
    if order == "seeded":
        np.random.seed(seed)
        return [int(c) for c in np.random.permutation(num_classes)]
    if isinstance(order, list):
        ids = [int(c) for c in order]
        if sorted(ids) != list(range(num_classes)):
            raise ConfigError(
                f"scenario.order: an explicit order must list every class id 0..{num_classes - 1} exactly once "
                f"(got {len(ids)} ids)"
            )
        return ids
    raise ConfigError(f"scenario.order: expected natural, seeded or a list, got {order!r}")


def build_scenario(num_classes: int, cfg: ScenarioConfig, seed: int) -> Scenario:
    """Cut ``num_classes`` into ``init_cls`` then equal ``increment`` tasks; the error says what would fit."""
    init, inc = cfg.init_cls, cfg.increment
    if init > num_classes:
        raise ConfigError(f"scenario.init_cls: {init} is more than the dataset's {num_classes} classes")
    rest = num_classes - init
    if rest % inc != 0:
        raise ConfigError(
            f"scenario: init_cls={init} + k·increment={inc} cannot cover the dataset's {num_classes} classes "
            f"({rest} left after the first task is not a multiple of {inc}); for T equal tasks use "
            f"init_cls=increment={num_classes}/T with T dividing {num_classes}"
        )
    offsets = [0, init] + [init + inc * (k + 1) for k in range(rest // inc)]
    return Scenario(class_order=class_order(num_classes, cfg.order, seed), offsets=offsets)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's augmentation in one epoch: a hash of (seed, epoch, dataset index), 63 bits."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TaskView(Dataset):
    """Images of a subset of labels, transformed, returned as (tensor, run label, dataset index).

    With ``seed`` (training views), the transform of item ``index`` in epoch ``epoch`` (:meth:`set_epoch`) draws
    from torch's CPU generator seeded with :func:`item_seed`, inside a fork of the random state: the caller's
    random state is left as it was, and the result is the same whichever process loads the item.
    """

    def __init__(self, images: LabeledImages, labels: np.ndarray, indices: np.ndarray, transform,
                 seed: int | None = None) -> None:
        self.images = images
        self.labels = labels  # run labels of all items of `images`
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next pass draws (set before creating the loader's iterator: worker
        processes copy the view when an epoch starts)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        image = self.images.load(idx)
        if self.seed is None:
            return self.transform(image), int(self.labels[idx]), idx
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(item_seed(self.seed, self.epoch, idx))
            return self.transform(image), int(self.labels[idx]), idx

    def describe(self, idx: int) -> str:
        return self.images.describe(idx)


def label_range_indices(labels: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Indices of the items whose run label lies in [lo, hi)."""
    return np.nonzero((labels >= lo) & (labels < hi))[0]
