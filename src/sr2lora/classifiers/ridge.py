"""``ridge``: RanPAC's head — a fixed random projection, ReLU, and ridge regression solved in closed form.

φ(f) = ReLU(f W) with W (d × M) standard Gaussian, drawn once from the run's ``seed`` and ``classifier.seed``
(``classifier.rp_dim`` = M; M = 0 uses φ(f) = f). For every training feature of a new class (model after its task), the run accumulates in
float64 G = Σ φφᵀ (M × M) and C = Σ φ yᵀ (M × classes, y one-hot). These sums do not depend on the order in
which samples or tasks arrive, so the solution after task t, β = (G + λI)⁻¹ C, equals a ridge fit on the
training features of all tasks 0..t at once: the head never forgets.

λ is chosen per task from ``classifier.lambdas`` (RanPAC's grid 10⁻⁸ … 10⁸): a seeded ``val_fraction`` of each
class's features is kept in separate sums (G_val, C_val, Σ‖y‖²), λ is fitted on the rest and scored by the
squared error on the held-out part (RanPAC's criterion, mean squared error), which the sums give exactly
without storing a single feature: ‖Y_v − Φ_v β‖² = Σ‖y‖² − 2 tr(βᵀ C_val) + tr(βᵀ G_val β). One eigendecomposition
of G_fit makes every λ of the grid cheap. The final β is solved on all data (G_fit + G_val) with that λ.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.splits import rng_stream_order, stratified_split
from .base import Classifier, register_classifier


class RidgeHead(nn.Module):
    """logits = φ(f) βᵀ with φ(f) = ReLU(f W) (or f when there is no projection); float32."""

    def __init__(self, projection: torch.Tensor | None, weight: torch.Tensor) -> None:
        super().__init__()
        self.has_projection = projection is not None
        self.register_buffer("projection", (projection if projection is not None else torch.zeros(0)).float().clone())
        self.register_buffer("weight", weight.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        phi = torch.relu(x @ self.projection) if self.has_projection else x
        return phi @ self.weight.T


def holdout_mask(labels: torch.Tensor, fraction: float, seed: Sequence[int]) -> torch.Tensor:
    """True for the held-out share of each class: round(fraction·n), at least 1 and at most n−1 when n ≥ 2
    (:func:`sr2lora.data.splits.stratified_split` with one random stream seeded by ``seed``)."""
    held = stratified_split(labels.cpu().numpy(), fraction, rng_stream_order(list(seed)),
                            field="classifier.val_fraction")
    return torch.from_numpy(held)


@torch.no_grad()
def validation_errors(
    g_fit: torch.Tensor, c_fit: torch.Tensor, g_val: torch.Tensor, c_val: torch.Tensor, yy_val: float,
    lambdas: Sequence[float],
) -> list[float]:
    """Held-out squared error ‖Y_v − Φ_v β_λ‖² of β_λ = (G_fit + λI)⁻¹ C_fit for every λ, from the sums only."""
    evals, q = torch.linalg.eigh(g_fit)
    evals = evals.clamp_min(0)  # G_fit is PSD; round-off may leave tiny negative eigenvalues
    p = q.T @ c_fit
    errors = []
    for lam in lambdas:  # 2·M²·classes per λ, cheaper than rotating G_val into the eigenbasis (2·M³)
        beta = q @ (p / (evals + lam)[:, None])
        errors.append(float(yy_val - 2 * (beta * c_val).sum() + (beta * (g_val @ beta)).sum()))
    return errors


@torch.no_grad()
def ridge_solve(g: torch.Tensor, c: torch.Tensor, lam: float) -> torch.Tensor:
    """β = (G + λI)⁻¹ C (M × classes), by Cholesky (G + λI is positive definite for λ > 0)."""
    a = g + lam * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(c, chol)
    return torch.linalg.solve(a, c)  # numerically not PD (huge G, tiny λ): the general solver


@register_classifier
class RandomProjectionRidge(Classifier):
    kind = "ridge"

    def __init__(self, cfg, dim, offsets) -> None:
        super().__init__(cfg, dim, offsets)
        c = cfg.classifier
        self.lambdas = [float(x) for x in c.lambdas]
        self.m = c.rp_dim if c.rp_dim > 0 else dim
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + c.seed)  # each run seed its own projection
        self.projection = torch.randn(dim, c.rp_dim, generator=g) if c.rp_dim > 0 else None
        f64 = torch.float64
        self.g_fit = torch.zeros(self.m, self.m, dtype=f64)
        self.g_val = torch.zeros(self.m, self.m, dtype=f64)
        self.c_fit = torch.zeros(self.m, 0, dtype=f64)
        self.c_val = torch.zeros(self.m, 0, dtype=f64)
        self.yy_val = torch.zeros(1, dtype=f64)
        self.n_val = 0
        self.weights: dict[int, torch.Tensor] = {}  # β after task t, (C_t, M) float32: what predicts
        self.chosen: dict[int, float] = {}  # λ chosen after task t

    def compute_device(self) -> torch.device:
        """Where the M × M algebra runs: the run's GPU when it has one (float64 there is fast), else the CPU.
        The statistics themselves are kept (and checkpointed) on the CPU."""
        dev = self.cfg.train.device
        if dev != "cpu" and torch.cuda.is_available():
            return torch.device("cuda" if dev == "auto" else dev)
        return torch.device("cpu")

    def phi(self, features: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """The random features φ(f) (N, M) in float64."""
        f = features.double().to(device)
        return torch.relu(f @ self.projection.double().to(device)) if self.projection is not None else f

    @torch.no_grad()
    def fit_task(self, t, features, labels, classes, class_names=None) -> None:
        self.drop_cached_head()
        width = self.offsets[t + 1]
        labels = labels.cpu().long()
        if len(labels) and int(labels.max()) >= width:
            raise ValueError(f"label {int(labels.max())} is not among the {width} classes seen after task {t + 1}")
        pad = width - self.c_fit.shape[1]
        if pad > 0:
            z = torch.zeros(self.m, pad, dtype=torch.float64)
            self.c_fit, self.c_val = torch.cat([self.c_fit, z], 1), torch.cat([self.c_val, z.clone()], 1)
        held = holdout_mask(labels, self.cfg.classifier.val_fraction, (self.cfg.seed, self.cfg.classifier.seed, t))
        dev = self.compute_device()
        phi = self.phi(features, dev)
        y = torch.nn.functional.one_hot(labels, width).double().to(dev)
        for mask, g, c in ((~held, self.g_fit, self.c_fit), (held, self.g_val, self.c_val)):
            p, yy = phi[mask.to(dev)], y[mask.to(dev)]
            g += (p.T @ p).cpu()
            c += (p.T @ yy).cpu()
        self.yy_val += y[held].pow(2).sum()
        self.n_val += int(held.sum())

    @torch.no_grad()
    def finish_task(self, t, heads, seed, single_task=False) -> None:
        self.drop_cached_head()
        dev = self.compute_device()
        g_fit, c_fit = self.g_fit.to(dev), self.c_fit.to(dev)
        g_val, c_val = self.g_val.to(dev), self.c_val.to(dev)
        if self.n_val == 0:
            lam = float(np.median(self.lambdas))
            warnings.warn(f"task {t + 1}: no class has 2 training samples, so no held-out data to choose the ridge "
                          f"λ; using the grid's median {lam:g}", stacklevel=2)
        else:
            errors = validation_errors(g_fit, c_fit, g_val, c_val, float(self.yy_val), self.lambdas)
            lam = self.lambdas[int(np.argmin(errors))]
        beta = ridge_solve(g_fit + g_val, c_fit + c_val, lam)
        self.weights[t] = beta.T.float().cpu().contiguous()
        self.chosen[t] = lam

    def head(self, heads, t: int) -> nn.Module:
        if t not in self.weights:
            raise KeyError(f"the ridge classifier holds no solution for task {t + 1}")
        dev = next(heads.parameters()).device if heads is not None and len(heads) else torch.device("cpu")
        return RidgeHead(self.projection, self.weights[t]).to(dev)

    def summary(self) -> dict:
        return {"kind": self.kind, "rp_dim": self.cfg.classifier.rp_dim, "lambdas": self.lambdas,
                "val_fraction": self.cfg.classifier.val_fraction,
                "lambda_after_task": [self.chosen[t] for t in sorted(self.chosen)]}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"g_fit": self.g_fit, "g_val": self.g_val, "c_fit": self.c_fit, "c_val": self.c_val,
               "yy_val": self.yy_val, "n_val": torch.tensor([self.n_val])}
        if self.projection is not None:
            out["projection"] = self.projection
        for t, w in self.weights.items():
            out[f"weight.{t}"] = w
            out[f"lambda.{t}"] = torch.tensor([self.chosen[t]], dtype=torch.float64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        self.g_fit, self.g_val = tensors["g_fit"].double(), tensors["g_val"].double()
        self.c_fit, self.c_val = tensors["c_fit"].double(), tensors["c_val"].double()
        self.yy_val, self.n_val = tensors["yy_val"].double(), int(tensors["n_val"].item())
        if "projection" in tensors:
            self.projection = tensors["projection"].float()
        for k, v in tensors.items():
            kind, _, t = k.partition(".")
            if kind == "weight":
                self.weights[int(t)] = v.float()
            elif kind == "lambda":
                self.chosen[int(t)] = float(v.item())
