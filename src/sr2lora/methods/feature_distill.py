"""`feat-all` and `feat-last`: MSE feature distillation of the per-layer [CLS] features (no relation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import LayerRegularizer, register_method
from .losses import feature_distill_loss


@dataclass
class FeatAllOptions:
    layers: Any = "all"  # which blocks are distilled (same syntax as sr2lora's method.layers)
    layers_seed: int = 0


@dataclass
class FeatLastOptions:
    """feat-last always distils the last block's feature only."""


@register_method
class FeatAll(LayerRegularizer):
    name = "feat-all"
    summary = "MSE between new and previous per-layer [CLS] features, averaged over all layers"
    Options: ClassVar[type] = FeatAllOptions

    def layer_loss(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return feature_distill_loss(new, old)


@register_method
class FeatLast(LayerRegularizer):
    name = "feat-last"
    summary = "MSE between new and previous final-layer [CLS] features"
    Options: ClassVar[type] = FeatLastOptions

    def selected(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, -1:]

    def layer_loss(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return feature_distill_loss(new, old)
