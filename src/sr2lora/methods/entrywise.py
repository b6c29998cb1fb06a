"""`entrywise`: align every entry of the relation matrix (the direct alignment the paper argues against)."""

from __future__ import annotations

from .base import LayerRegularizer, register_method
from .losses import entrywise_relation_loss


@register_method
class EntrywiseRelation(LayerRegularizer):
    name = "entrywise"
    summary = "smooth-L1 between the entries of each sample's relation matrix, new vs previous model"
    relation_loss = staticmethod(entrywise_relation_loss)
