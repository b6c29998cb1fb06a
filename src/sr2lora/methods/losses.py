"""The losses: relation alignment (spectral and entry-wise), feature distillation, LogitNorm cross-entropy.

Relation inputs are per-layer features ``H`` of shape (batch, layers, dim); the relation matrix of a sample is
R = H Hᵀ (layers × layers), always built in fp32 (even under autocast). The old side never carries a gradient.

``relation_norm`` chooses the scale of R (docs/method.md):
- ``none``  : the reference. Eigenvalues are squared [CLS] norms (~1e2–1e4 for post-LayerNorm features), so
  smooth-L1 (β=1) acts as L1 on them and the loss is large.
- ``l2``    : each layer feature is L2-normalised first, R is a cosine-similarity matrix with unit diagonal and
  its eigenvalues sum to L. The loss is scale-free and O(1).
- ``trace`` : R / trace(R): eigenvalues sum to 1 (a distribution over the spectrum); invariant to a global
  rescaling of H, with a loss of order 1/L.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

RELATION_NORMS = ("none", "l2", "trace")


def _fp32(h: torch.Tensor) -> torch.Tensor:
    return h.float() if h.dtype != torch.float32 else h


def relation_matrix(h: torch.Tensor, relation_norm: str = "none") -> torch.Tensor:
    """Per-sample inter-layer relation R = H Hᵀ (B, L, L) in fp32, symmetrised."""
    if relation_norm not in RELATION_NORMS:
        raise ValueError(f"relation_norm must be one of {RELATION_NORMS}, got {relation_norm!r}")
    with torch.autocast(device_type=h.device.type, enabled=False):
        h = _fp32(h)
        if relation_norm == "l2":
            h = F.normalize(h, dim=-1)
        r = h @ h.transpose(-1, -2)
        r = 0.5 * (r + r.transpose(-1, -2))
        if relation_norm == "trace":
            tr = torch.diagonal(r, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-12)
            r = r / tr[..., None, None]
    return r


def relation_spectrum(h: torch.Tensor, relation_norm: str = "none") -> torch.Tensor:
    """Eigenvalues of each sample's R, ascending (B, L) — the squared singular values of H."""
    r = relation_matrix(h, relation_norm)
    with torch.autocast(device_type=r.device.type, enabled=False):
        return torch.linalg.eigvalsh(r)


def _smooth_l1_to_old(
    describe: Callable[[torch.Tensor], torch.Tensor], new: torch.Tensor, old: torch.Tensor, beta: float
) -> torch.Tensor:
    """smooth-L1(β) between ``describe`` of the new features and of the previous model's (a fixed target)."""
    target_new = describe(new)
    with torch.no_grad():
        target_old = describe(old.detach())
    return F.smooth_l1_loss(target_new, target_old, beta=beta)


def spectral_relation_loss(
    new: torch.Tensor, old: torch.Tensor, relation_norm: str = "none", beta: float = 1.0
) -> torch.Tensor:
    """SR²-LoRA: smooth-L1(β) between the sorted eigenvalues of R_new and R_old, mean over batch × layers."""
    return _smooth_l1_to_old(lambda h: relation_spectrum(h, relation_norm), new, old, beta)


def batch_spectral_relation_loss(
    new: torch.Tensor, old: torch.Tensor, relation_norm: str = "none", beta: float = 1.0
) -> torch.Tensor:
    """``spectral-batch``: eigenvalues of the batch-mean relation matrix instead of per-sample ones."""
    r_new = relation_matrix(new, relation_norm).mean(0)
    with torch.no_grad():
        r_old = relation_matrix(old.detach(), relation_norm).mean(0)
    with torch.autocast(device_type=r_new.device.type, enabled=False):
        ev_new = torch.linalg.eigvalsh(r_new)
        ev_old = torch.linalg.eigvalsh(r_old)
    return F.smooth_l1_loss(ev_new, ev_old, beta=beta)


def entrywise_relation_loss(
    new: torch.Tensor, old: torch.Tensor, relation_norm: str = "none", beta: float = 1.0
) -> torch.Tensor:
    """``entrywise``: smooth-L1(β) between the entries of R_new and R_old, mean over batch × L × L."""
    return _smooth_l1_to_old(lambda h: relation_matrix(h, relation_norm), new, old, beta)


def feature_distill_loss(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """MSE between new and old per-layer features (B, L, d), averaged over everything."""
    with torch.autocast(device_type=new.device.type, enabled=False):
        return F.mse_loss(_fp32(new), _fp32(old.detach()))


def logitnorm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """LogitNorm CE (Wei et al. 2022): cross-entropy of L2-normalised logits divided by τ."""
    logits = logits.float()
    norms = logits.norm(p=2, dim=-1, keepdim=True) + 1e-7
    return F.cross_entropy(logits / norms / tau, targets)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of softmax(logits) over the batch."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()
