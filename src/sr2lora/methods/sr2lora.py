"""SR²-LoRA (arXiv 2605.07420) and its `spectral-batch` ablation: align the spectrum of the relation R = H Hᵀ."""

from __future__ import annotations

import torch

from ..losses import batch_spectral_relation_loss, spectral_relation_loss
from .base import LayerRegularizer, register_method


@register_method
class SR2LoRA(LayerRegularizer):
    name = "sr2lora"
    summary = "smooth-L1 between the eigenvalues of each sample's inter-layer relation, new vs previous model"

    def layer_loss(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        o = self.options
        return spectral_relation_loss(new, old, relation_norm=o.relation_norm, beta=o.beta)


@register_method
class SpectralBatch(LayerRegularizer):
    name = "spectral-batch"
    summary = "as sr2lora, but on the eigenvalues of the batch-mean relation matrix"

    def layer_loss(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        o = self.options
        return batch_spectral_relation_loss(new, old, relation_norm=o.relation_norm, beta=o.beta)
