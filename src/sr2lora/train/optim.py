"""The optimiser of a task's trainable parameters, chosen by ``train.optimizer``.

Adam with betas (0.9, 0.999) or SGD with momentum 0.9, both with ``train.weight_decay``; the lr set here is
the base lr, which the engine overwrites every step from the schedule (:mod:`sr2lora.train.schedules`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import TrainConfig
from ..core.errors import ConfigError

# the names ``train.optimizer`` accepts (the config checks them; tests keep the two lists equal)
OPTIMIZERS = ("adam", "sgd")


def build_optimizer(params: Iterable[torch.nn.Parameter], train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh optimiser over ``params`` for one task (no state carried from the task before)."""
    tc = train_cfg
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, betas=(0.9, 0.999), weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=0.9, weight_decay=tc.weight_decay)
    raise ConfigError(f"train.optimizer: expected one of {', '.join(OPTIMIZERS)}, got {tc.optimizer!r}")
