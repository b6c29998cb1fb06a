"""Stratified splits: hold out a fraction of every class, with the per-class ordering rule as a parameter.

One function, :func:`stratified_split`, does the part every split shares: for each class (in ascending label
order) it asks an *ordering rule* for the class's items in split order and holds out the first
:func:`held_count` of them. What differs between the datasets is only how a class is ordered, and each rule is
kept because published numbers depend on the exact items it holds out:

- :func:`rng_stream_order` (the run's validation split ``data.val_fraction``, and the ridge head's λ hold-out
  ``classifier.val_fraction``): one ``numpy.random.default_rng`` stream, one permutation per class in label order
  (so a class's order depends on the classes before it);
- :func:`class_keyed_order` (``folder``-style datasets without a split): a legacy ``RandomState`` seeded by the
  seed and the class *name*, so adding a class moves no image of another class;
- :func:`content_hash_order` (clip-art): items sorted by ``sha256("<seed>:<md5>")``, independent of numpy and of
  file order, so an item keeps its side when other files are added or removed.

The count per class is ``fraction * n`` rounded (half to even, Python's ``round``, or half up for the clip-art
split), then clamped so that a class with n >= 2 items keeps at least one on each side; a class of one item is
never held out.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from .base import DataError

# (class label, its item indices in ascending order) -> the same indices in split order (held-out ones first)
OrderRule = Callable[[int, np.ndarray], np.ndarray]
Rounding = Literal["half-even", "half-up"]


def held_count(n: int, fraction: float, rounding: Rounding = "half-even") -> int:
    """Items of an ``n``-item class to hold out: ``fraction * n`` rounded, at least 1 and at most n-1 (0 if n < 2)."""
    x = n * fraction
    if rounding == "half-even":
        k = int(round(x))
    elif rounding == "half-up":
        k = int(math.floor(x + 0.5))
    else:
        raise ValueError(f"rounding: expected 'half-even' or 'half-up', got {rounding!r}")
    return min(max(k, 1), n - 1) if n >= 2 else 0


def stratified_split(
    labels: np.ndarray | Sequence[int],
    fraction: float,
    order: OrderRule,
    *,
    rounding: Rounding = "half-even",
    field: str = "fraction",
) -> np.ndarray:
    """Boolean mask over ``labels``, True = held out: per class the first :func:`held_count` items of ``order``.

    ``order`` is called once per class, in ascending label order (a rule drawing from one random stream relies
    on this). ``field`` names the config key in the error for a fraction outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{field}: must be between 0 and 1 (exclusive), got {fraction}")
    labels = np.asarray(labels)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        ordered = np.asarray(order(int(c), idx), dtype=np.int64)
        if len(ordered) != len(idx) or not np.array_equal(np.sort(ordered), idx):
            raise ValueError(f"ordering rule returned {len(ordered)} indices for class {int(c)}, not a permutation")
        held[ordered[: held_count(len(idx), fraction, rounding)]] = True
    return held


def rng_stream_order(seed: int | Sequence[int]) -> OrderRule:
    """One ``default_rng(seed)`` stream; each class (in label order) takes the next permutation of its items."""
    rng = np.random.default_rng(seed if isinstance(seed, int | np.integer) else list(seed))

    def order(c: int, idx: np.ndarray) -> np.ndarray:
        return idx[rng.permutation(len(idx))]

    return order


def class_keyed_order(seed: int, names: Sequence[str]) -> OrderRule:
    """Per class a ``RandomState([seed, crc32(name)])`` permutation (``names[label]``), stable across numpy versions."""

    def order(c: int, idx: np.ndarray) -> np.ndarray:
        rng = np.random.RandomState([seed & 0xFFFFFFFF, zlib.crc32(names[c].encode("utf-8"))])
        return idx[rng.permutation(len(idx))]

    return order


def content_hash_order(seed: int, digests: Sequence[str]) -> OrderRule:
    """Items sorted by ``sha256(f"{seed}:{digests[i]}")`` (a content digest per item, e.g. its md5)."""

    def order(c: int, idx: np.ndarray) -> np.ndarray:
        key = {int(i): hashlib.sha256(f"{seed}:{digests[i]}".encode()).hexdigest() for i in idx}
        return np.asarray(sorted(key, key=key.__getitem__), dtype=np.int64)

    return order
