"""``ca``: the per-task linear heads after Gaussian classifier alignment (the reference's classifier).

The class statistics (mean, Cholesky factor of the shrunk covariance) of each new class are computed with the
model after its task and never recomputed; after every task t ≥ 1 all heads are re-trained on samples of the
class Gaussians (:func:`sr2lora.classifiers.gaussians.align_classifier`). The heads themselves predict, so this classifier's
checkpoint state is just the statistics. It checks its own health after every task: non-finite statistics, or
heads that alignment drove to NaN or to huge logits, stop the run with the setting to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.errors import TrainingError
from .base import Classifier, check_finite_after, register_classifier
from .gaussians import ClassGaussians, align_classifier

# |logit| of a class mean above this means the head's weights blew up (a converged head's logits are O(10)).
DIVERGED_LOGIT = 1e6

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

    def check_budget(self) -> None:
        """Alignment draws ``ca.samples_factor × batch`` samples per class every epoch (batch: ``ca.batch_size``, or
        ``train.batch_size`` for 0), all at once: refuse settings whose samples (with their noise and logits, in
        float32) cannot fit in the memory available now, instead of failing after the first task."""
        from ..core.errors import ConfigError
        from ..core.hardware import available_memory

        ca = self.cfg.ca
        if not (ca.enabled and ca.epochs > 0):
            return
        batch = ca.batch_size or self.cfg.train.batch_size
        classes, per_class = int(self.offsets[-1]), ca.samples_factor * batch
        need = classes * per_class * 4 * (3 * self.dim + 2 * classes)
        have = available_memory()
        if have is not None and need > have:
            key = "ca.batch_size" if ca.batch_size else "train.batch_size"
            taken = "" if ca.batch_size else " (ca.batch_size=0 takes train.batch_size)"
            raise ConfigError(
                f"{key}={batch}: classifier alignment would draw ca.samples_factor={ca.samples_factor} x {batch} "
                f"samples for each of the {classes} classes every epoch{taken}, about {need / 2**30:.3g} GiB, more "
                f"than the {have / 2**30:.3g} GiB of memory available; lower {key} (or ca.samples_factor)"
            )

    def fit_task(self, t, features, labels, classes, class_names=None) -> None:
        ca = self.cfg.ca
        self.gaussians.add_classes(features, labels, classes, ca.cov_shrink, ca.fallback_var, class_names=class_names)
        self._check_statistics(t, classes)

    def finish_task(self, t: int, heads: TaskHeads, seed: int, single_task: bool = False) -> None:
        ca = self.cfg.ca
        # After task 0 of a sequence there is nothing to align (the reference skips it). `joint` has only that
        # task, and every incremental method's final head is an aligned one, so joint's is aligned too.
        if ca.enabled and ca.epochs > 0 and (t > 0 or single_task):
            self._align(t, heads, seed)
        self._check_heads(t, heads)

    def _align(self, t: int, heads: TaskHeads, seed: int) -> None:
        ca = self.cfg.ca
        w, b = heads.concatenated(t + 1)
        g = torch.Generator().manual_seed(seed)
        w2, b2 = align_classifier(
            w, b, self.gaussians, self.offsets[t + 1], epochs=ca.epochs, lr=ca.lr, momentum=ca.momentum,
            weight_decay=self.cfg.train.weight_decay, batch_size=ca.batch_size or self.cfg.train.batch_size,
            samples_factor=ca.samples_factor, tau=ca.tau, t_max=ca.t_max, generator=g, minibatch=ca.minibatch,
            on_step=self.on_step,
        )
        heads.load_concatenated(w2.to(w.device), b2.to(b.device))

    def _check_statistics(self, t: int, classes: Sequence[int]) -> None:
        """The new classes' means and Cholesky factors must be finite before alignment samples from them."""
        g = self.gaussians
        new = [c for c in classes if c in g.means]
        check_finite_after("the class statistics", t, {
            **{f"mean of class {c}": g.means[c] for c in new}, **{f"covariance of class {c}": g.chols[c] for c in new}
        }, f"raise ca.cov_shrink (now {self.cfg.ca.cov_shrink}) or lower train.lr (now {self.cfg.train.lr})")

    def _check_heads(self, t: int, heads: TaskHeads) -> None:
        """The heads that predict must be finite and give sane logits on the class means: alignment can diverge
        (ca.lr, ca.tau) into NaN, or into huge but finite weights at chance accuracy."""
        ca = self.cfg.ca
        fix = f"lower ca.lr (now {ca.lr}) or raise ca.tau (now {ca.tau}), or set ca.enabled=false"
        w, b = (x.detach().float().cpu() for x in heads.concatenated(t + 1))
        check_finite_after("classifier alignment", t, {"head weights": w, "head biases": b}, fix)
        seen = [c for c in range(self.offsets[t + 1]) if c in self.gaussians.means]
        if not seen:
            return
        logits = torch.nn.functional.linear(torch.stack([self.gaussians.means[c] for c in seen]).float(), w, b)
        check_finite_after("classifier alignment", t, {"logits of the class means": logits}, fix)
        top = float(logits.abs().max())
        if top > DIVERGED_LOGIT:
            raise TrainingError(
                f"task {t + 1}: classifier alignment diverged: logits of the class means reach {top:.3g} (a sane "
                f"head stays below {DIVERGED_LOGIT:.0e}); {fix}. The last complete task's checkpoint is kept."
            )

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
