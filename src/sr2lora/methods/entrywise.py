"""`entrywise`: align every entry of the relation matrix (the direct alignment the paper argues against)."""

from __future__ import annotations

import torch

from ..losses import entrywise_relation_loss
from .base import LayerRegularizer, register_method


@register_method
class EntrywiseRelation(LayerRegularizer):
    name = "entrywise"
    summary = "smooth-L1 between the entries of each sample's relation matrix, new vs previous model"

    def layer_loss(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        o = self.options
        return entrywise_relation_loss(new, old, relation_norm=o.relation_norm, beta=o.beta)
