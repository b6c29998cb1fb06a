"""``ca``: the per-task linear heads after Gaussian classifier alignment (the reference's classifier).

The class statistics (mean, Cholesky factor of the shrunk covariance) of each new class are computed with the
model after its task and never recomputed; after every task t ≥ 1 all heads are re-trained on samples of the
class Gaussians (:func:`sr2lora.classifiers.gaussians.align_classifier`). The heads themselves predict, so this classifier's
checkpoint state is just the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import Classifier, register_classifier
from .gaussians import ClassGaussians, align_classifier

if TYPE_CHECKING:
    from ..models.heads import TaskHeads


class _Heads(nn.Module):
    """Heads 0..t of the run: features → concatenated logits."""

    def __init__(self, heads: TaskHeads, upto: int) -> None:
        super().__init__()
        self.heads, self.upto = heads, upto

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x, upto=self.upto)


@register_classifier
class GaussianAlignment(Classifier):
    kind = "ca"
    uses_heads = True

    def __init__(self, cfg, dim: int, offsets: Sequence[int]) -> None:
        super().__init__(cfg, dim, offsets)
        self.gaussians = ClassGaussians(dim)
        self.on_step: Callable[[], None] | None = None  # called after every alignment step (tests count them)

    def fit_task(self, t, features, labels, classes, class_names=None) -> None:
        ca = self.cfg.ca
        self.gaussians.add_classes(features, labels, classes, ca.cov_shrink, ca.fallback_var, class_names=class_names)

    def finish_task(self, t: int, heads: TaskHeads, seed: int, single_task: bool = False) -> None:
        ca = self.cfg.ca
        # After task 0 of a sequence there is nothing to align (the reference skips it). `joint` has only that
        # task, and every incremental method's final head is an aligned one, so joint's is aligned too.
        if not ca.enabled or ca.epochs == 0 or (t == 0 and not single_task):
            return
        w, b = heads.concatenated(t + 1)
        g = torch.Generator().manual_seed(seed)
        w2, b2 = align_classifier(
            w, b, self.gaussians, self.offsets[t + 1], epochs=ca.epochs, lr=ca.lr, momentum=ca.momentum,
            weight_decay=self.cfg.train.weight_decay, batch_size=ca.batch_size or self.cfg.train.batch_size,
            samples_factor=ca.samples_factor, tau=ca.tau, t_max=ca.t_max, generator=g, minibatch=ca.minibatch,
            on_step=self.on_step,
        )
        heads.load_concatenated(w2.to(w.device), b2.to(b.device))

    def head(self, heads: TaskHeads, t: int) -> nn.Module:
        return _Heads(heads, t + 1)

    @property
    def fallback(self) -> list[int]:
        return self.gaussians.fallback

    def summary(self) -> dict:
        return {"kind": self.kind, "minibatch": self.cfg.ca.minibatch}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.gaussians.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.gaussians.load_state_tensors(tensors)
