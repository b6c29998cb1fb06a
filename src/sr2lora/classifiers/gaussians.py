"""Class Gaussian statistics and classifier alignment (CA), shared by every method.

After task t, each *new* class c gets μ_c and Σ_c = cov + shrink·I of its training features (test transform,
current model); old classes' statistics are never recomputed. CA then re-trains all heads jointly on features
sampled from N(μ_c, Σ_c): each epoch draws ``n = samples_factor × batch`` samples per seen class as μ + z Lᵀ
with the cached Cholesky factor L, shuffles them and takes SGD steps with loss mean softmax entropy + LogitNorm
CE(τ); CosineAnnealingLR(T_max) stepped per epoch (the reference's schedule). The reference's mini-batch is ``n``
samples (``minibatch="reference"``: C steps per epoch for C seen classes); ``minibatch="batch"`` steps on
mini-batches of ``batch`` samples instead (``samples_factor``× more steps; this toolkit's earlier behaviour).
The heads are trained as one concatenated (C × d) matrix, which is what the per-task heads compute together.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..methods.losses import logitnorm_cross_entropy, softmax_entropy

MINIBATCH_MODES = ("reference", "batch")  # ca.minibatch: samples_factor × batch per step (reference) | batch


class ClassGaussians:
    """Per-class mean and Cholesky factor of the covariance, indexed by run label."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.means: dict[int, torch.Tensor] = {}
        self.chols: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.fallback: list[int] = []  # classes that got the isotropic fallback covariance
        self._stack: tuple[tuple[int, ...], torch.Tensor, torch.Tensor] | None = None  # cached stacked()

    def __len__(self) -> int:
        return len(self.means)

    @torch.no_grad()
    def add_classes(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        classes: list[int],
        shrink: float = 0.01,
        fallback_var: float = 1.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        """Compute μ_c and chol(cov_c + shrink·I) in float64 for each of ``classes`` from (features, labels).

        ``class_names[c]`` (indexed by label) names a class in the warning about a too-small class.
        """
        self._stack = None
        features = features.double()
        eye = torch.eye(self.dim, dtype=torch.float64, device=features.device)
        small: list[str] = []  # the classes with too few samples, named in one warning (not one per class)
        for c in classes:
            x = features[labels == c]
            if len(x) == 0:
                raise ValueError(f"class {c} has no training features; cannot compute its statistics")
            mean = x.mean(0)
            if len(x) < 2:
                name = f" ({class_names[c]!r})" if class_names is not None and c < len(class_names) else ""
                small.append(f"class {c}{name}")
                cov = fallback_var * eye
                self.fallback.append(int(c))
            else:
                cov = torch.cov(x.T) + shrink * eye
            self.means[int(c)] = mean.float().cpu()
            self.chols[int(c)] = torch.linalg.cholesky(cov).float().cpu()
            self.counts[int(c)] = len(x)
        if len(small) == 1:
            warnings.warn(f"{small[0]} has 1 training sample(s): no covariance can be estimated, using the isotropic "
                          f"fallback {fallback_var}·I (ca.fallback_var)", stacklevel=2)
        elif small:
            more = f" and {len(small) - 5} more" if len(small) > 5 else ""
            warnings.warn(f"{len(small)} classes have 1 training sample each ({', '.join(small[:5])}{more}): no "
                          f"covariance can be estimated, using the isotropic fallback {fallback_var}·I "
                          f"(ca.fallback_var); the run's results list them as fallback_classes", stacklevel=2)

    def stacked(self, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(means (C, d), transposed Cholesky factors Lᵀ (C, d, d)) of ``classes``, built once and cached.

        Every epoch of an alignment samples the same classes, so the stack is reused instead of rebuilt (the
        copy of C·d² floats was most of an epoch's sampling time); adding or loading classes drops the cache.
        """
        key = tuple(int(c) for c in classes)
        if self._stack is None or self._stack[0] != key:
            mu = torch.stack([self.means[c] for c in key])
            chol_t = torch.stack([self.chols[c].T for c in key]).contiguous()
            self._stack = (key, mu, chol_t)
        return self._stack[1], self._stack[2]

    def sample(self, classes: list[int], n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of each class as μ + z Lᵀ, all classes in one batched matmul: (C·n, d), labels."""
        mu, chol_t = self.stacked(classes)
        z = torch.randn(len(classes), n, self.dim, generator=generator)
        x = torch.baddbmm(mu[:, None, :], z, chol_t)  # μ + z Lᵀ in one fused call, no temporary for z Lᵀ
        y = torch.tensor(classes).repeat_interleave(n)
        return x.reshape(-1, self.dim), y

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for c in self.means:
            out[f"mean.{c}"] = self.means[c]
            out[f"chol.{c}"] = self.chols[c]
            out[f"count.{c}"] = torch.tensor([self.counts[c]])
        out["fallback"] = torch.tensor(self.fallback, dtype=torch.int64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._stack = None
        for k, v in tensors.items():
            kind, _, c = k.partition(".")
            if kind == "mean":
                self.means[int(c)] = v.float()
            elif kind == "chol":
                self.chols[int(c)] = v.float()
            elif kind == "count":
                self.counts[int(c)] = int(v.item())
        self.fallback = [int(c) for c in tensors.get("fallback", torch.zeros(0, dtype=torch.int64)).tolist()]


def align_classifier(
    weight: torch.Tensor,
    bias: torch.Tensor,
    gaussians: ClassGaussians,
    num_classes: int,
    *,
    epochs: int = 20,
    lr: float = 0.005,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    samples_factor: int = 5,
    tau: float = 0.1,
    t_max: int = 5,
    generator: torch.Generator | None = None,
    minibatch: str = "reference",
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-train the stacked heads (C × d, C) on samples of the class Gaussians; returns the new (weight, bias).

    ``minibatch="reference"``: mini-batches of ``samples_factor × batch_size`` samples (C steps per epoch);
    ``"batch"``: mini-batches of ``batch_size``. ``on_step`` is called after every optimiser step (counting).
    """
    if minibatch not in MINIBATCH_MODES:
        raise ValueError(f"minibatch: expected one of {', '.join(MINIBATCH_MODES)}, got {minibatch!r}")
    generator = generator or torch.Generator().manual_seed(0)
    w = weight.detach().clone().float().cpu().requires_grad_(True)
    b = bias.detach().clone().float().cpu().requires_grad_(True)
    opt = torch.optim.SGD([w, b], lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    classes = list(range(num_classes))
    per_class = samples_factor * batch_size
    step_size = per_class if minibatch == "reference" else batch_size
    for _ in range(epochs):
        x, y = gaussians.sample(classes, per_class, generator)
        perm = torch.randperm(len(y), generator=generator)
        x, y = x[perm], y[perm]
        for start in range(0, len(y), step_size):
            xb, yb = x[start : start + step_size], y[start : start + step_size]
            logits = F.linear(xb, w, b)
            loss = softmax_entropy(logits) + logitnorm_cross_entropy(logits, yb, tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
        sched.step()
    return w.detach(), b.detach()
