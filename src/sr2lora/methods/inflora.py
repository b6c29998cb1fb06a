"""`inflora`: InfLoRA, interference-free low-rank adaptation (Liang & Li, CVPR 2024, arXiv 2404.00228).

Each task t gets its own LoRA branch B_t A_t on the adapted qkv slices, but the down-projection A_t (r × d) is
*designed before training and never trained*; only B_t (zeros at start) and the task's head learn. A_t is
built so that the update B_t A_t acts only on input directions that past tasks did not use (paper §4; the
paper writes the branch as A_t B_t with B_t the fixed "dimensionality reduction" matrix and A_t the trained
one — here A is the down-projection, as everywhere in sr2lora):

1. Representation matrix (per adapted layer l): the inputs h of layer l's qkv Linear on the task's training
   images, all tokens, with the model as it is (branches < t; branch t is still zero), collected with
   ``model.capture_qkv_inputs`` under no_grad. We keep its second moment C_t = (1/N) Σ h hᵀ (d × d), as the
   authors' code does (``cur_matrix``); C_t's eigenvalues are the squared singular values of H_t / √N.
2. Design of A_t: with M_t an orthonormal basis of the past tasks' input subspace, Q_t one of its orthogonal
   complement and P = I − M_t M_tᵀ = Q_t Q_tᵀ, A_t's rows are (``criterion=reference``, the default: the
   authors' code, ``methods/inflora.py`` at commit e08b00ed) the top-r left singular vectors of P·C_t, i.e. the
   top eigenvectors of P C_t² P; or (``criterion=paper``, §4's "Ĥ_t = (I − M M ᵀ) H_t") the top-r left
   singular vectors of the projected representation, i.e. the top eigenvectors of P C_t P. Both are computed
   inside span(Q_t) (SVD of Q_tᵀC_t, resp. eigenvectors of Q_tᵀ C_t Q_t, mapped back with Q_t), so every
   row lies in span(Q_t) to float64 precision: A_t M_t = 0. Rows are scaled by ``a_scale`` (1/√3 in the
   authors' code). When fewer than r free directions remain, the extra rows are zero. One A_t per layer is
   shared by every adapted target (k and v by default): they read the same input h, and the authors' code
   copies the same matrix into ``lora_A_k`` and ``lora_A_v``.
3. Subspace memory update after training task t (DualGPM, Liang & Li 2023, which InfLoRA uses for M_t): the
   representation C_t of the *trained* model (branches ≤ t) on the task's data; directions are added to M_t
   (largest first) until the share ε_t of C_t's energy is captured.
   ``criterion=reference`` (default) is the code's ``update_DualGPM`` (:func:`reference_grow_memory`): energies
   are squared singular values of C_t itself (σ⁴ of the representation, total ‖C_t‖_F²), the part outside
   the memory is measured on P·C_t, whose left singular vectors are added; after the first task it keeps
   r = #{k: cumulative share < ε} directions (at least one), one fewer than "the smallest k reaching ε".
   ``criterion=paper``: with λ_i the eigenvalues of C_t and λ̂_i those of Q_tᵀ C_t Q_t, E = Σ λ_i^p, the
   smallest k with (E − Σ λ̂_i^p + Σ_{i≤k} λ̂_i^p) / E ≥ ε_t (GPM's energy criterion); p = ``energy_power``
   (1: the paper's Σσ² of the representation matrix; 2: σ⁴, but still measured on P C P).
   Measured on ``clipart-10t`` after its first task (docs/baselines.md): the paper's p = 1 keeps 106 / 163 / 128
   of 384 directions in blocks 0 / 5 / 11, the code's criterion 1 / 4 / 2, a 40–100× smaller protected subspace.
   Threshold schedule (authors' code, ``update_DualGPM``): ε_t = ε_start + (ε_end − ε_start)·t/T for task t
   (0-based) of T; defaults 0.95 → 1.0 (their CIFAR-100 and DomainNet configs; the ImageNet-R presets set
   their 0.98 → 1.0 and 50 epochs in ``per_method``). DualGPM storage: a layer keeps M_t while
   dim M_t ≤ d/2, else its complement Q_t (``retain``); this is only a cheaper representation of the same
   subspace. ``results.json`` records the directions added per task and layer (``method_state``).

State across tasks (checkpointed through ``state_tensors``): per layer, the stored basis (float64) and whether
it is M or Q. Past A_s and B_s are ordinary LoRA factors in the model checkpoint.

Known deviations from the authors' code (github.com/liangyanshuo/InfLoRA, e08b00ed; checked by
tests/test_reference_fixtures.py): float64 subspace algebra (the code: float32); a layer whose memory exceeds
d/2 after the *first* task is stored as its complement (the code stores the kept directions there and then
fails its own assertion); no directions with zero energy are ever added, and A_t gets zero rows rather than
directions of zero singular value when fewer than r free directions remain; representation matrices use every
image of the task by default (``samples`` caps it) with the run's train augmentation, as the code does with its
train loader. The shared engine adds classifier alignment after every task for every method (the authors'
``inflora.py`` has none; its ``inflora_ca.py`` variant has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.errors import ConfigError
from .base import Method, TaskContext, register_method

CRITERIA = ("reference", "paper")


@dataclass
class InfLoRAOptions:
    eps_start: float = 0.95  # ε for the first task (code: lamb)
    eps_end: float = 1.0  # ε_t = eps_start + (eps_end − eps_start)·t/T (code: lame)
    samples: int = 0  # images of the task's train loader per representation matrix (0: all of them)
    a_scale: float = 1 / math.sqrt(3)  # A_t = a_scale × unit rows (the authors' code divides by √3)
    criterion: str = "reference"  # reference: the authors' code (SVD of P·C); paper: eigenvectors of P C P
    energy_power: int = 1  # criterion=paper only: 1: Σσ² of the representation matrix (paper); 2: Σσ⁴

    def __post_init__(self) -> None:
        """Options validate themselves, so a config is checked without building the method."""
        o = self
        for key in ("eps_start", "eps_end"):
            if not 0.0 < getattr(o, key) <= 1.0:
                raise ConfigError(f"method.{key}: expected a number in (0, 1], got {getattr(o, key)}")
        if o.samples < 0:
            raise ConfigError(f"method.samples: expected 0 (all images) or a positive count, got {o.samples}")
        if o.a_scale <= 0:
            raise ConfigError(f"method.a_scale: must be positive, got {o.a_scale}")
        if o.criterion not in CRITERIA:
            raise ConfigError(f"method.criterion: expected one of {', '.join(CRITERIA)}, got {o.criterion!r}")
        if o.energy_power not in (1, 2):
            raise ConfigError(
                f"method.energy_power: expected 1 (paper) or 2 (authors' code), got {o.energy_power}"
            )


def orthogonal_complement(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (d × (d − k)) of span(basis)'s complement, for an orthonormal d × k ``basis``."""
    d, k = basis.shape
    if k == 0:
        return torch.eye(d, dtype=basis.dtype, device=basis.device)
    if k >= d:
        return basis.new_zeros(d, 0)
    u, _, _ = torch.linalg.svd(basis, full_matrices=True)
    return u[:, k:]


def _sorted_eigh(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    evals, evecs = torch.linalg.eigh((mat + mat.T) / 2)
    order = torch.argsort(evals, descending=True)
    return evals[order].clamp_min(0), evecs[:, order]


def design_down_projection(cov: torch.Tensor, free: torch.Tensor, rank: int) -> torch.Tensor:
    """InfLoRA's A_t rows (rank × d, unit norm): the top eigenvectors of the representation second moment
    ``cov`` restricted to span(``free``), so that A_t is orthogonal to the past subspace; zero rows when fewer
    than ``rank`` free directions exist."""
    d, m = free.shape
    out = cov.new_zeros(rank, d)
    if m == 0:
        return out
    _, w = _sorted_eigh(free.T @ cov @ free)
    k = min(rank, m)
    out[:k] = (free @ w[:, :k]).T
    return out


def grow_memory(
    cov: torch.Tensor, free: torch.Tensor, eps: float, power: int = 1
) -> tuple[torch.Tensor, int]:
    """(free basis after the task, directions added): add the free directions of ``cov`` with the most energy
    to the past subspace until it holds a fraction ``eps`` of cov's energy (the GPM/DualGPM criterion)."""
    lam, _ = _sorted_eigh(cov)
    total = float((lam**power).sum())
    if free.shape[1] == 0 or total <= 0:
        return free, 0
    lam_hat, w = _sorted_eigh(free.T @ cov @ free)
    energy = lam_hat**power / total
    captured = 1.0 - float(energy.sum())  # share already inside the past subspace
    tiny = 1e-12 * float(lam.max())
    r = 0
    while r < len(lam_hat) and captured < eps and float(lam_hat[r]) > tiny:
        captured += float(energy[r])
        r += 1
    return free @ w[:, r:], r


def reference_down_projection(cov: torch.Tensor, free: torch.Tensor, rank: int) -> torch.Tensor:
    """A_t's rows (rank × d, unit norm) as the authors' code builds them: the top left singular vectors of
    P·C (P the projector onto span(``free``), C = ``cov``), i.e. the top eigenvectors of P C² P. Computed as
    ``free`` × the left singular vectors of ``free``ᵀ C, so every row lies in span(``free``) exactly; zero rows
    when fewer than ``rank`` free directions exist (the code would take directions of zero singular value)."""
    d, m = free.shape
    out = cov.new_zeros(rank, d)
    if m == 0:
        return out
    u, _, _ = torch.linalg.svd(free.T @ cov, full_matrices=False)
    k = min(rank, m)
    out[:k] = (free @ u[:, :k]).T
    return out


def reference_grow_memory(
    cov: torch.Tensor, free: torch.Tensor, eps: float, first: bool, retain: bool
) -> tuple[torch.Tensor, int]:
    """(free basis after the task, directions added) by the authors' ``update_DualGPM``.

    Energies are squared singular values relative to ‖C‖_F² = Σλ(C)² (the code takes singular values of the
    second moment C itself, so σ⁴ of the representation), and the free part is measured on P·C (not P C P).
    After the first task (``first``): r = #{k : Σ_{i≤k} λ_i² / Σλ² < ε}, at least 1 (one direction fewer than
    "the smallest k reaching ε"). Later, with the free energy e = ‖P C‖_F² / ‖C‖_F²: while the stored basis is
    the past subspace (``retain`` False) directions of P·C are added while 1 − e < ε; while it is the free
    subspace (``retain`` True) while e ≥ 1 − ε (the code's two loops, which differ only at equality). Directions
    of zero singular value are never added (the code's loops could run into them)."""
    d, m = free.shape
    lam = torch.linalg.eigvalsh((cov + cov.T) / 2).clamp_min(0).flip(0)
    total = float((lam**2).sum())
    if m == 0 or total <= 0:
        return free, 0
    u, sv, _ = torch.linalg.svd(free.T @ cov, full_matrices=False)
    ratio = (sv**2 / total).tolist()
    tiny = 1e-12 * float(lam.max())
    usable = sum(1 for v in sv.tolist() if v > tiny)
    if first:
        cum = torch.cumsum(lam**2 / total, 0)
        r = max(int((cum < eps).sum()), 1)
    else:
        e = sum(ratio)  # free energy ‖P C‖² / ‖C‖²
        r = 0
        if retain:
            while r < usable and e >= 1 - eps:
                e -= ratio[r]
                r += 1
        else:
            captured = 1.0 - e
            while r < usable and captured < eps:
                captured += ratio[r]
                r += 1
    r = min(r, usable, m)
    return free @ u[:, r:], r


@torch.no_grad()
def representation_matrices(ctx: TaskContext, tasks: int, samples: int = 0) -> list[torch.Tensor]:
    """Per adapted layer, (1/N) Σ h hᵀ over every token of the task's training images (float64, CPU), h
    being the input of the layer's qkv Linear in the model with LoRA branches 0..tasks−1."""
    model = ctx.model
    d = model.loras[0].in_features
    sums = [torch.zeros(d, d, dtype=torch.float64) for _ in model.loras]
    count = [0]

    def accumulate(layer: int, x: torch.Tensor) -> None:
        h = x.reshape(-1, d).float()
        sums[layer].add_((h.T @ h).double().cpu())
        if layer == 0:
            count[0] += h.shape[0]

    was_training = model.training
    model.eval()
    seen = 0
    try:
        with model.capture_qkv_inputs(accumulate):
            for x, _, _ in ctx.loader:
                if samples > 0:
                    x = x[: samples - seen]
                if len(x) == 0:
                    break
                model(x.to(ctx.device), tasks=tasks, logits=False)
                seen += len(x)
                if samples > 0 and seen >= samples:
                    break
    finally:
        model.train(was_training)
    return [s / max(count[0], 1) for s in sums]


@register_method
class InfLoRA(Method):
    name = "inflora"
    summary = "per-task LoRA, A_t fixed orthogonal to past tasks' input subspace (DualGPM), only B_t trained"
    Options: ClassVar[type] = InfLoRAOptions

    def __init__(self, options: InfLoRAOptions, weight: float = 1.0) -> None:
        super().__init__(options, weight)
        self.bases: list[torch.Tensor] = []  # per layer: orthonormal basis of M (retain False) or of Q (True)
        self.retain: list[bool] = []
        self.added: list[list[int]] = []  # per task: directions added to each layer's memory (diagnostics)

    # ---- the subspace memory (DualGPM storage)
    def threshold(self, t: int, num_tasks: int) -> float:
        """ε_t = ε_start + (ε_end − ε_start)·t/T (the authors' schedule, t 0-based)."""
        o = self.options
        return o.eps_start + (o.eps_end - o.eps_start) * t / max(num_tasks, 1)

    def past_basis(self, layer: int) -> torch.Tensor:
        """Orthonormal basis (d × k, float64) of the input subspace that past tasks occupy in ``layer``."""
        b = self.bases[layer]
        return orthogonal_complement(b) if self.retain[layer] else b

    def free_basis(self, layer: int) -> torch.Tensor:
        """Orthonormal basis (d × (d − k), float64) of the complement of :meth:`past_basis`."""
        b = self.bases[layer]
        return b if self.retain[layer] else orthogonal_complement(b)

    def _store(self, layer: int, free: torch.Tensor) -> None:
        d, m = free.shape
        if d - m > d / 2:  # the past subspace is the larger one: keep its complement
            self.bases[layer], self.retain[layer] = free.clone(), True
        else:
            self.bases[layer], self.retain[layer] = orthogonal_complement(free), False

    # ---- hooks
    def before_task(self, ctx: TaskContext) -> None:
        t, model = ctx.task, ctx.model
        if not self.bases:
            d = model.loras[0].in_features
            self.bases = [torch.zeros(d, 0, dtype=torch.float64) for _ in model.loras]
            self.retain = [False] * len(model.loras)
        covs = representation_matrices(ctx, tasks=t, samples=self.options.samples)
        design = reference_down_projection if self.options.criterion == "reference" else design_down_projection
        designed = [
            design(covs[layer], self.free_basis(layer), lora.rank) * self.options.a_scale
            for layer, lora in enumerate(model.loras)
        ]
        model.set_down_projection(t, designed, freeze=True)  # one A per layer, shared by every adapted target

    def trainable_parameters(self, ctx: TaskContext) -> list[torch.nn.Parameter]:
        t = ctx.task
        return [lora.B[t] for lora in ctx.model.loras] + list(ctx.model.heads[t].parameters())

    def after_task(self, ctx: TaskContext) -> None:
        t = ctx.task
        covs = representation_matrices(ctx, tasks=t + 1, samples=self.options.samples)
        eps = self.threshold(t, ctx.num_tasks)
        added = []
        first = not self.added  # no task has grown the memory yet
        for layer in range(len(self.bases)):
            if self.options.criterion == "reference":
                free, r = reference_grow_memory(covs[layer], self.free_basis(layer), eps, first,
                                                self.retain[layer])
            else:
                free, r = grow_memory(covs[layer], self.free_basis(layer), eps, self.options.energy_power)
            self._store(layer, free)
            added.append(r)
        self.added.append(added)

    def report(self) -> dict:
        """Per task, the directions added to each layer's past subspace and its size afterwards."""
        sizes, total = [], [0] * len(self.bases)
        for row in self.added:
            total = [a + b for a, b in zip(total, row)]
            sizes.append(list(total))
        return {"criterion": self.options.criterion, "added": self.added, "subspace_size": sizes}

    # ---- checkpointed state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for layer, (b, keep) in enumerate(zip(self.bases, self.retain)):
            out[f"basis.{layer}"] = b
            out[f"retain.{layer}"] = torch.tensor([int(keep)], dtype=torch.uint8)
        if self.added:
            out["added"] = torch.tensor(self.added, dtype=torch.int64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        n = len([k for k in tensors if k.startswith("basis.")])
        self.bases = [tensors[f"basis.{i}"].to(torch.float64) for i in range(n)]
        self.retain = [bool(int(tensors[f"retain.{i}"][0])) for i in range(n)]
        self.added = tensors["added"].tolist() if "added" in tensors else []
