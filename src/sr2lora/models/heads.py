"""Per-task linear heads: head t maps the d-dim feature to task t's classes; logits are concatenated."""

from __future__ import annotations

import torch
from torch import nn


class TaskHeads(nn.ModuleList):
    """A list of ``nn.Linear(d, classes_t)``; ``forward(x, upto)`` concatenates heads 0..upto−1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def add(self, num_classes: int) -> None:
        ref = next(iter(self[0].parameters()), None) if len(self) else None
        head = nn.Linear(self.dim, num_classes)
        if ref is not None:
            head = head.to(ref.device)
        self.append(head)

    @property
    def sizes(self) -> list[int]:
        return [h.out_features for h in self]

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:  # type: ignore[override]
        heads = list(self)[: len(self) if upto is None else upto]
        return torch.cat([h(x) for h in heads], dim=-1)

    def head_logits(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Logits of head t only (task-local cross-entropy)."""
        return self[t](x)

    @torch.no_grad()
    def concatenated(self, upto: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (C, d), bias (C,)) of heads 0..upto−1 stacked, for alignment and export."""
        heads = list(self)[: len(self) if upto is None else upto]
        return torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads])

    @torch.no_grad()
    def load_concatenated(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Write a stacked (weight, bias) back into heads 0..k−1 (inverse of :meth:`concatenated`)."""
        start = 0
        for h in self:
            n = h.out_features
            if start + n > weight.shape[0]:
                break
            h.weight.copy_(weight[start : start + n])
            h.bias.copy_(bias[start : start + n])
            start += n
