"""The one stratified-split helper (sr2lora.data.splits) and its three ordering rules, recomputed by hand."""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import pytest

from sr2lora.data.base import DataError
from sr2lora.data.splits import (
    class_keyed_order,
    content_hash_order,
    held_count,
    rng_stream_order,
    stratified_split,
)


def test_held_count_rounding_and_clamps():
    # 2.5: half to even gives 2 (Python's round), half up gives 3 (the clip-art rule)
    assert held_count(10, 0.25) == 2 and held_count(10, 0.25, "half-up") == 3
    assert held_count(14, 0.25) == 4 and held_count(14, 0.25, "half-up") == 4  # 3.5: both round up
    assert held_count(40, 0.5) == 20
    assert held_count(2, 0.01) == 1 and held_count(2, 0.99) == 1  # both sides keep one
    assert held_count(30, 0.99) == 29 and held_count(30, 0.001) == 1
    assert held_count(1, 0.5) == 0 and held_count(0, 0.5) == 0  # a single item is never held out
    with pytest.raises(ValueError, match="rounding"):
        held_count(10, 0.25, "down")  # type: ignore[arg-type]


LABELS = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0, 3, 2, 1, 0])  # class sizes 5, 3, 4, 1 (class 3 a singleton)


def _by_hand(labels, fraction, ordered_per_class, half_up=False):
    """The held-out mask from explicit per-class orders: the first round(f*n) (>=1, <=n-1) of each class."""
    mask = np.zeros(len(labels), dtype=bool)
    for order in ordered_per_class.values():
        n = len(order)
        x = n * fraction
        k = int(np.floor(x + 0.5)) if half_up else int(round(x))
        k = min(max(k, 1), n - 1) if n >= 2 else 0
        mask[list(order[:k])] = True
    return mask


def test_rng_stream_rule_by_hand():
    rng = np.random.default_rng(7)
    orders = {}
    for c in range(4):  # ascending labels, one stream: each class takes the next permutation
        idx = np.flatnonzero(LABELS == c)
        orders[c] = idx[rng.permutation(len(idx))]
    expected = _by_hand(LABELS, 0.25, orders)
    got = stratified_split(LABELS, 0.25, rng_stream_order(7))
    assert got.tolist() == expected.tolist()
    # a seed given as a sequence (the ridge head's (seed, classifier seed, task)) seeds the same way as a list
    rng = np.random.default_rng([1, 2, 3])
    orders = {c: np.flatnonzero(LABELS == c)[rng.permutation(int((LABELS == c).sum()))] for c in range(4)}
    assert stratified_split(LABELS, 0.5, rng_stream_order((1, 2, 3))).tolist() == _by_hand(LABELS, 0.5, orders).tolist()


def test_class_keyed_rule_by_hand_and_independent_of_other_classes():
    names = ["cat", "dog", "emu", "yak"]
    orders = {}
    for c, name in enumerate(names):
        idx = np.flatnonzero(LABELS == c)
        perm = np.random.RandomState([3, zlib.crc32(name.encode("utf-8"))]).permutation(len(idx))
        orders[c] = idx[perm]
    got = stratified_split(LABELS, 0.25, class_keyed_order(3, names))
    assert got.tolist() == _by_hand(LABELS, 0.25, orders).tolist()
    # dropping class 1 ("dog") leaves every other class's items on the same side
    keep = LABELS != 1
    relabel = np.array([0, -1, 1, 2])[LABELS[keep]]
    fewer = stratified_split(relabel, 0.25, class_keyed_order(3, ["cat", "emu", "yak"]))
    assert fewer.tolist() == got[keep].tolist()
    # a negative or > 32-bit seed is reduced the documented way, not an error
    assert stratified_split(LABELS, 0.25, class_keyed_order(-1, names)).sum() == got.sum()


def test_content_hash_rule_by_hand_and_independent_of_file_order():
    md5s = [hashlib.md5(f"drawing {i}".encode()).hexdigest() for i in range(len(LABELS))]
    labels = np.where(LABELS == 3, 2, LABELS)  # every class has >= 2 items
    orders = {}
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        orders[c] = sorted(idx, key=lambda i: hashlib.sha256(f"5:{md5s[i]}".encode()).hexdigest())
    got = stratified_split(labels, 0.25, content_hash_order(5, md5s), rounding="half-up")
    assert got.tolist() == _by_hand(labels, 0.25, orders, half_up=True).tolist()
    # the same items in another file order: each item keeps its side
    perm = np.random.RandomState(0).permutation(len(labels))
    shuffled = stratified_split(labels[perm], 0.25, content_hash_order(5, [md5s[i] for i in perm]),
                                rounding="half-up")
    assert shuffled.tolist() == got[perm].tolist()


@pytest.mark.parametrize("rule", ["stream", "keyed", "hash"])
def test_stratified_deterministic_and_seeded(rule):
    rs = np.random.RandomState(11)
    labels = rs.permutation(np.concatenate([np.full(n, c) for c, n in enumerate([2, 3, 7, 20, 41, 1])]))
    names = [f"class{c}" for c in range(6)]
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(len(labels))]

    def split(seed, fraction=0.3):
        order = {"stream": rng_stream_order(seed), "keyed": class_keyed_order(seed, names),
                 "hash": content_hash_order(seed, md5s)}[rule]
        return stratified_split(labels, fraction, order)

    a = split(0)
    assert split(0).tolist() == a.tolist()  # the same seed, the same split
    assert len({tuple(split(s).tolist()) for s in range(5)}) > 1  # the seed matters
    for c, n in enumerate([2, 3, 7, 20, 41, 1]):  # per class: round(0.3 n), both sides kept when n >= 2
        held = int(a[labels == c].sum())
        assert held == held_count(n, 0.3)
        assert (0 < held < n) if n >= 2 else held == 0
    for frac in (0.01, 0.99):
        m = split(3, frac)
        for c, n in enumerate([2, 3, 7, 20, 41, 1]):
            if n >= 2:
                assert 1 <= m[labels == c].sum() <= n - 1


def test_bad_fraction_and_bad_rule():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DataError, match=r"data\.test_fraction: must be between 0 and 1"):
            stratified_split(LABELS, bad, rng_stream_order(0), field="data.test_fraction")
    with pytest.raises(ValueError, match="not a permutation"):
        stratified_split(LABELS, 0.5, lambda c, idx: idx[:1])
    assert stratified_split(np.zeros(0, dtype=int), 0.5, rng_stream_order(0)).shape == (0,)


def test_rule_called_once_per_class_in_label_order():
    calls = []

    def order(c, idx):
        calls.append((c, idx.tolist()))
        return idx

    held = stratified_split(LABELS, 0.5, order)
    assert [c for c, _ in calls] == [0, 1, 2, 3]
    assert all(idx == np.flatnonzero(LABELS == c).tolist() for c, idx in calls)  # ascending indices in
    assert held.tolist() == _by_hand(LABELS, 0.5, {c: idx for c, idx in calls}).tolist()
