"""`sdlora`: SD-LoRA, scalable decoupled LoRA (Wu et al., ICLR 2025, arXiv 2501.13198), with -RR and -KD.

Paper §3.2, Eq. 4: with M = {α_k} the magnitudes and W = {Ā_kB_k} the fixed directions of past tasks
(X̄ = X / ‖X‖_F, per adapted projection), a layer computes during task t

    h' = (W_0 + α_1 Ā_1B_1 + … + α_{t−1} Ā_{t−1}B_{t−1} + α_t A_tB_t) x,

where every α_k (k ≤ t) and the new pair (A_t, B_t) are learnable and the past directions are frozen;
inference uses the final model (no task selection). §4.1: one set of magnitudes is shared by all projections
(every layer, every adapted target), each with its own direction; magnitudes start at 1.

How it is realised here. The model's LoRA factors always hold the *effective* update E_s = B_s A_s = α_s·D_s
of each task, so folding, checkpoints, ``sr2lora export/predict`` and every engine path see plain LoRA. While
task t trains, the model's branch scales (``model.set_branch_scales``) multiply branch s by γ_s = α_s / α_s⁰,
where α is one learnable vector (this method's parameter, given to the optimiser) and α_s⁰ its value at the
start of the task (so γ = 1: the model starts as the previous model) — the direction D_s = E_s/α_s⁰ of a past
branch is fixed, only its magnitude moves. The scales are a callable that each layer evaluates at each forward,
so gradients reach α. After the task, γ is baked into B_s (B_s ← γ_s B_s), the scales are cleared and the
weights are re-folded.

The current task trains as α_t·B_tA_t without normalisation (B_t starts at zero, where Ā_tB_t is undefined),
as the authors' code does. Its *handover* to a fixed direction happens at the start of task t+1 (the authors'
code also renormalises only when it rebuilds the network for the next task, after evaluating task t):
- ``handover=keep`` (default): the trained update is kept as it is, so the model that starts task t+1 computes
  exactly what the model that finished task t did (tested). In Eq. 4's terms: the fixed direction is
  Ā_tB_t = E_t/‖E_t‖_F per projection and its magnitude starts at the trained norm ‖E_t‖_F; the shared
  learnable α_t multiplies all of them together, each layer keeping the relative norm it learned.
- ``handover=normalize`` (Eq. 4 read literally, with every projection's magnitude set to the shared α_t):
  each projection's update becomes α_t·Ā_tB_t, i.e. ‖E_t‖_F = |α_t| in every layer and target. This changes
  the function whenever the trained norms are not |α_t|. Measured on ``clipart-10t`` (seed 1993): trained
  updates have ‖E_t‖_F ≈ 0.07–0.16, so the hand-over multiplies them by ~6–14 and the run collapses (A_T 1.2%
  against 18.3% with ``keep``); hence ``keep`` is the default. (The authors' code divides by ‖B‖_F‖A‖_F and
  multiplies by a magnitude re-initialised to 0.8; whether that is continuous depends on their trained norms,
  which we could not check without their runs.)
``magnitudes=layer`` gives every (task, layer, target) its own α instead of one per task.

Variants (§3.5, Algorithm 1):
- SD-LoRA-RR (``rr_tasks``/``rr_ranks``, paper: μ=4, ν=8, r_μ=8, r_ν=6 with r_1=10; 0-based tasks as in the
  authors' code): task t uses rank r_t = the rank of the last entry of ``rr_tasks`` ≤ t. Implemented by
  zeroing and freezing (gradient mask) the trailing r − r_t components of A_t and B_t: the same function and
  the same number of trained parameters as a rank-r_t pair, but the checkpoint keeps the padded shape
  (simplification: storage is not reduced; resume and export stay layout-stable).
- SD-LoRA-KD (``kd_tau`` > 0, paper τ = 9·10⁻⁴): after task t, per layer and target, solve the least squares
  Eq. 7, min_β ‖Ā_tB_t − Σ_{k<t} β_k Ā_kB_k‖_F over the past directions; where the residual is ≤ τ, the new
  direction is absorbed: α_k ← α_k + α_t β_k (Eq. 8 writes α_k + Δα_k; the two agree for α_t = 1; ours keeps
  the function exactly up to the residual) and A_t, B_t are zeroed there. Since the fit is per projection, the
  absorbed Δα are per (layer, target); they live in the per-layer scale of B_k, on top of the shared α_k. The
  zeroed slot keeps its shape in the checkpoint (simplification, as for RR).

Known deviations from the authors' code (github.com/WuYichen-97/SD-Lora-CL, as read in a public fork of it,
zyx303/SD-Lora-CL): it normalises past branches by ‖B_k‖_F‖A_k‖_F rather than ‖B_kA_k‖_F (the paper's Eq. 3),
starts magnitudes at 0.8 and re-initialises the past magnitudes when it builds each new task's network; we
follow the paper (‖B_kA_k‖_F, ones) and carry the learned α_k over from task to task, and our default hand-over
keeps the trained update (``handover=keep``, above) where the code rescales it. It adapts q and v; we
adapt ``model.lora_targets`` (k, v by default). Optimiser and schedule are the preset's, as for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.errors import ConfigError
from .base import Method, TaskContext, register_method


@dataclass
class SDLoRAOptions:
    magnitudes: str = "shared"  # shared: one α per task for every layer and target (paper); layer: per both
    init_magnitude: float = 1.0  # α_t when task t starts (paper: ones; authors' code: 0.8)
    handover: str = "keep"  # keep: past update as trained (continuous); normalize: α·ĀB̄ per projection
    rr_tasks: list[int] = field(default_factory=list)  # SD-LoRA-RR: 0-based tasks where rank drops ([4, 8])
    rr_ranks: list[int] = field(default_factory=list)  # ... to these ranks ([8, 6] in the paper, rank 10)
    kd_tau: float = 0.0  # SD-LoRA-KD: absorb where the least-squares residual ≤ τ (paper 9e-4); 0: off

    def __post_init__(self) -> None:
        """Options validate themselves, so a config is checked without building the method."""
        o = self
        if o.magnitudes not in ("shared", "layer"):
            raise ConfigError(f"method.magnitudes: expected shared or layer, got {o.magnitudes!r}")
        if o.handover not in ("normalize", "keep"):
            raise ConfigError(f"method.handover: expected normalize or keep, got {o.handover!r}")
        if not math.isfinite(o.init_magnitude):
            raise ConfigError(f"method.init_magnitude: expected a finite number, got {o.init_magnitude}")
        if len(o.rr_tasks) != len(o.rr_ranks):
            raise ConfigError(
                f"method.rr_tasks / method.rr_ranks: one rank per step, got {o.rr_tasks} and {o.rr_ranks}"
            )
        if any(b <= a for a, b in zip(o.rr_tasks, o.rr_tasks[1:])) or any(t < 0 for t in o.rr_tasks):
            raise ConfigError(f"method.rr_tasks: expected increasing 0-based task indices, got {o.rr_tasks}")
        if any(r < 1 for r in o.rr_ranks):
            raise ConfigError(f"method.rr_ranks: ranks must be at least 1, got {o.rr_ranks}")
        if o.kd_tau < 0:
            raise ConfigError(f"method.kd_tau: expected 0 (off) or a positive threshold, got {o.kd_tau}")


def task_rank(t: int, rank: int, rr_tasks: list[int], rr_ranks: list[int]) -> int:
    """SD-LoRA-RR's rank of task t (0-based): the rank of the last step at or before t, else ``rank``."""
    r = rank
    for start, step_rank in zip(rr_tasks, rr_ranks):
        if t >= start:
            r = step_rank
    return r


def fit_directions(target: torch.Tensor, past: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    """(β, residual) of min_β ‖target − Σ β_k past_k‖_F for unit-norm matrices (SD-LoRA Eq. 7), in float64."""
    v = target.reshape(-1).double()
    if not past:
        return v.new_zeros(0), float(v.norm())
    u = torch.stack([p.reshape(-1).double() for p in past], dim=1)  # (D, k)
    beta = torch.linalg.lstsq(u.T @ u, u.T @ v).solution if u.shape[1] else v.new_zeros(0)
    return beta, float((v - u @ beta).norm())


@register_method
class SDLoRA(Method):
    name = "sdlora"
    summary = "past LoRA directions fixed, their magnitudes and the new LoRA learnable (SD-LoRA, -RR, -KD)"
    Options: ClassVar[type] = SDLoRAOptions
    rewrites_past: ClassVar[bool] = True  # past magnitudes move: only the final model can be reloaded

    def __init__(self, options: SDLoRAOptions, weight: float = 1.0) -> None:
        super().__init__(options, weight)
        self.alpha = torch.zeros(0, dtype=torch.float64)  # magnitudes of finished tasks: (T,) or (T, L, K)
        self.handed = 0  # tasks 0..handed−1 have been handed over to fixed directions
        self.absorbed: list[list[list[bool]]] = []  # per task, layer, target: direction absorbed by KD
        self.param: nn.Parameter | None = None  # α of tasks 0..t while task t trains
        self._ref: torch.Tensor | None = None
        self._handles: list[Any] = []

    # ---- helpers
    def _per_layer(self) -> bool:
        return self.options.magnitudes == "layer"

    def _scales(self, layer: int) -> torch.Tensor:
        assert self.param is not None and self._ref is not None
        coef = self.param / self._ref
        return coef[:, layer] if self._per_layer() else coef

    def magnitude(self, s: int, layer: int, target: int) -> float:
        """α of task s in (layer, target) (the shared α_s with ``magnitudes=shared``)."""
        a = self.alpha[s]
        return float(a[layer, target] if self._per_layer() else a)

    # ---- hooks
    @torch.no_grad()
    def _hand_over(self, model: Any, upto: int) -> None:
        """Tasks handed..upto−1 become fixed directions (``handover=normalize``: ‖B_sA_s‖_F = |α_s| per
        projection)."""
        for s in range(self.handed, upto):
            if self.options.handover == "normalize":
                for layer, lora in enumerate(model.loras):
                    for k in range(len(lora.targets)):
                        norm = float((lora.B[s][k] @ lora.A[s][k]).norm())
                        if norm > 0:
                            lora.B[s][k].mul_(abs(self.magnitude(s, layer, k)) / norm)
        self.handed = max(self.handed, upto)
        model.fold()

    def before_task(self, ctx: TaskContext) -> None:
        t, model = ctx.task, ctx.model
        self._hand_over(model, t)
        n_layers, n_targets = len(model.loras), len(model.loras[0].targets)
        rank = model.loras[0].rank
        r_t = task_rank(t, rank, self.options.rr_tasks, self.options.rr_ranks)
        if r_t > rank:
            raise ConfigError(f"method.rr_ranks: rank {r_t} of task {t} exceeds model.rank={rank}")
        if r_t < rank:  # SD-LoRA-RR: the trailing components of A_t and B_t are zero and stay zero
            for lora in model.loras:
                with torch.no_grad():
                    lora.A[t][:, r_t:, :].zero_()
                    lora.B[t][:, :, r_t:].zero_()
                mask_a = torch.ones_like(lora.A[t])
                mask_a[:, r_t:, :] = 0
                mask_b = torch.ones_like(lora.B[t])
                mask_b[:, :, r_t:] = 0
                self._handles.append(lora.A[t].register_hook(lambda g, m=mask_a: g * m))
                self._handles.append(lora.B[t].register_hook(lambda g, m=mask_b: g * m))
        shape = (n_layers, n_targets) if self._per_layer() else ()
        past = self.alpha[:t].reshape(t, *shape)
        new = torch.full((1, *shape), float(self.options.init_magnitude), dtype=torch.float64)
        ref = torch.cat([past, torch.ones_like(new)])  # branch t is the raw B_t A_t: γ_t = α_t
        ref = torch.where(ref.abs() < 1e-12, torch.ones_like(ref), ref)
        device = model.loras[0].base.weight.device
        self.param = nn.Parameter(torch.cat([past, new]).float().to(device))
        self._ref = ref.float().to(device)
        model.set_branch_scales(self._scales)  # γ of layer l, recomputed from α at every forward

    def trainable_parameters(self, ctx: TaskContext) -> list[nn.Parameter]:
        assert self.param is not None
        return ctx.model.task_parameters(ctx.task) + [self.param]

    @torch.no_grad()
    def after_task(self, ctx: TaskContext) -> None:
        t, model = ctx.task, ctx.model
        for h in self._handles:
            h.remove()
        self._handles = []
        assert self.param is not None and self._ref is not None
        alpha = self.param.detach().double().cpu()
        gamma = (self.param.detach() / self._ref).double().cpu()
        model.clear_branch_scales()
        for layer, lora in enumerate(model.loras):
            for s in range(t + 1):
                g = gamma[s, layer] if self._per_layer() else gamma[s].expand(len(lora.targets))
                lora.B[s].mul_(g.to(lora.B[s].dtype).to(lora.B[s].device).view(-1, 1, 1))
        self.alpha = alpha
        self.param, self._ref = None, None
        absorbed = [[False] * len(lora.targets) for lora in model.loras]
        if self.options.kd_tau > 0 and t > 0:
            self._distill(model, t, absorbed)
        self.absorbed.append(absorbed)
        model.fold()

    @torch.no_grad()
    def _distill(self, model: Any, t: int, absorbed: list[list[bool]]) -> None:
        """SD-LoRA-KD: where task t's direction is (nearly) a combination of past ones, fold it into their
        magnitudes and zero A_t, B_t there."""
        for layer, lora in enumerate(model.loras):
            for k in range(len(lora.targets)):
                e_t = (lora.B[t][k] @ lora.A[t][k]).double()
                n_t = float(e_t.norm())
                if n_t == 0:
                    continue
                past = [(s, (lora.B[s][k] @ lora.A[s][k]).double()) for s in range(t)]
                past = [(s, e, float(e.norm())) for s, e in past if float(e.norm()) > 0]
                beta, residual = fit_directions(e_t / n_t, [e / n for _, e, n in past])
                if not past or residual > self.options.kd_tau:
                    continue
                # the magnitude task t's branch would have as a past branch (after its handover)
                m_t = abs(self.magnitude(t, layer, k)) if self.options.handover == "normalize" else n_t
                for (s, _, n_s), b in zip(past, beta.tolist()):
                    lora.B[s][k].mul_(1.0 + m_t * b / n_s)
                lora.A[t][k].zero_()
                lora.B[t][k].zero_()
                absorbed[layer][k] = True

    # ---- checkpointed state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"alpha": self.alpha.clone(), "handed": torch.tensor([self.handed], dtype=torch.int64)}
        if self.absorbed:
            out["absorbed"] = torch.tensor(self.absorbed, dtype=torch.uint8)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "alpha" in tensors:
            self.alpha = tensors["alpha"].to(torch.float64)
        if "handed" in tensors:
            self.handed = int(tensors["handed"][0])
        if "absorbed" in tensors:
            flags = tensors["absorbed"].tolist()
            self.absorbed = [[[bool(v) for v in row] for row in task] for task in flags]
