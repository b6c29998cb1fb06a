"""SR²-LoRA (arXiv 2605.07420) and its `spectral-batch` ablation: align the spectrum of the relation R = H Hᵀ."""

from __future__ import annotations

from .base import LayerRegularizer, register_method
from .losses import batch_spectral_relation_loss, spectral_relation_loss


@register_method
class SR2LoRA(LayerRegularizer):
    name = "sr2lora"
    summary = "smooth-L1 between the eigenvalues of each sample's inter-layer relation, new vs previous model"
    relation_loss = staticmethod(spectral_relation_loss)


@register_method
class SpectralBatch(LayerRegularizer):
    name = "spectral-batch"
    summary = "as sr2lora, but on the eigenvalues of the batch-mean relation matrix"
    relation_loss = staticmethod(batch_spectral_relation_loss)
