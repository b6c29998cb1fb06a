"""A run's data: the dataset built from ``data.*``, seen through the run's scenario (class order, tasks).

:func:`prepare_data` is what training and the offline analyses both use, so they see the same labels, the
same training items per task and the same evaluation split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..config import RunConfig
from .base import DatasetBundle
from .integrity import drop_unreadable
from .registry import build_dataset
from .scenario import Scenario, build_scenario
from .splits import rng_stream_order, stratified_split


@dataclass
class RunData:
    """A built dataset seen through the run's scenario: run labels and which items train / evaluate."""

    bundle: DatasetBundle
    scenario: Scenario
    train_labels: np.ndarray
    eval_labels: np.ndarray
    train_index: np.ndarray
    eval_index: np.ndarray
    eval_split: str  # "test" or "val"
    skipped_files: list[str] = field(default_factory=list)  # unreadable files dropped (data.skip_bad)

    @property
    def eval_images(self):
        return self.bundle.train if self.eval_split == "val" else self.bundle.test


def prepare_data(cfg: RunConfig, *, single_task: bool) -> RunData:
    """Build the dataset and scenario; with ``data.val_fraction`` > 0, evaluate on a split carved from train.

    ``single_task``: one task holding every class, in the same class order (the method's flag, e.g. `joint`'s;
    the caller knows the method, the data does not).
    """
    bundle = build_dataset(cfg.data)
    sc_cfg = cfg.scenario
    if single_task:
        sc_cfg = dataclasses.replace(sc_cfg, init_cls=bundle.num_classes, increment=1)
    scenario = build_scenario(bundle.num_classes, sc_cfg, cfg.seed)
    bundle, skipped = drop_unreadable(bundle, cfg.data.skip_bad)  # every file opened once, before the model
    train_labels = scenario.remap(bundle.train.targets)
    if cfg.data.val_fraction > 0:
        held = stratified_split(train_labels, cfg.data.val_fraction, rng_stream_order(cfg.data.split_seed),
                                field="data.val_fraction")
        train_index, eval_index = np.flatnonzero(~held), np.flatnonzero(held)
        return RunData(bundle, scenario, train_labels, train_labels, train_index, eval_index, "val", skipped)
    test_labels = scenario.remap(bundle.test.targets)
    return RunData(
        bundle, scenario, train_labels, test_labels, np.arange(len(train_labels)), np.arange(len(test_labels)),
        "test", skipped,
    )
