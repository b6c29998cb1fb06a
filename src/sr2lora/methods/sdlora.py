"""`sdlora`: SD-LoRA, scalable decoupled LoRA (Wu et al., ICLR 2025, arXiv 2501.13198), with -RR and -KD.

Paper §3.2, Eq. 4: with M = {α_k} the magnitudes and W = {Ā_kB_k} the fixed directions of past tasks
(X̄ = X / ‖X‖_F, per adapted projection), a layer computes during task t

    h' = (W_0 + α_1 Ā_1B_1 + … + α_{t−1} Ā_{t−1}B_{t−1} + α_t A_tB_t) x,

where every α_k (k ≤ t) and the new pair (A_t, B_t) are learnable and the past directions are frozen;
inference uses the final model (no task selection). §4.1: one set of magnitudes is shared by all projections
(every layer, every adapted target), each with its own direction.

The defaults are the method as the authors' code runs it (github.com/WuYichen-97/SD-Lora-CL, commit 8bacded6,
``backbone/lora.py`` and ``models/sdlora.py``; docs/method.md lists what remains different):
- hand-over ``handover=reference``: the code rebuilds its network for every task; each past branch s is
  ``α_s · B_sA_s x / (‖B_s‖_F ‖A_s‖_F)`` (the product of the factors' norms, not ‖B_sA_s‖_F as Eq. 3) with its
  magnitude *re-created at 0.8* (``init_magnitude``) whatever was learned for it before; the new branch is
  ``α_t · B_tA_t`` unnormalised with α_t starting at 0.8. So at every new task the past updates restart at
  norm 0.8·‖B_sA_s‖_F/(‖B_s‖_F‖A_s‖_F) ≤ 0.8, and the model's function changes at the hand-over.
- the recipe (:data:`REFERENCE_RECIPE`, declared as this method's ``training_defaults``, so it applies where
  the preset and command line leave the keys unset): SGD with momentum 0.9 over every trainable parameter (the
  magnitudes included), no weight decay, constant lr 1e-2 (ImageNet-R; the paper presets set CIFAR-100's 8e-3
  and ImageNet-A's 5e-3 in their ``per_method`` section), LoRA on q and v.
The paper-literal readings stay options: ``init_magnitude=1`` (Eq. 4's magnitudes start at one),
``handover=keep`` (the trained update is kept as it is, so the model that starts task t+1 computes exactly
what the one that finished task t did; its learned magnitudes carry over) and ``handover=normalize`` (Eq. 4
read literally: ‖B_sA_s‖_F = |α_s| per projection, the learned α_s carried over). With ``keep`` and the
built-in Adam at 5e-4, α barely moves from its start (0.01 per task, measured), which made ``sdlora`` the same
as ``seqlora`` before the reference recipe became the default (docs/baselines.md).

How it is realised here. The model's LoRA factors always hold the *effective* update E_s = B_s A_s = α_s·D_s
of each task, so folding, checkpoints, ``sr2lora export/predict`` and every engine path see plain LoRA. While
task t trains, the model's branch scales (``model.set_branch_scales``) multiply branch s by γ_s = α_s / α_s⁰,
where α is one learnable vector (this method's parameter, given to the optimiser) and α_s⁰ its value at the
start of the task (γ = 1: the model starts as the hand-over left it) — the direction D_s = E_s/α_s⁰ of a past
branch is fixed, only its magnitude moves. The scales are a callable that each layer evaluates at each forward,
so gradients reach α. After the task, γ is baked into B_s (B_s ← γ_s B_s), the scales are cleared and the
weights are re-folded. The hand-over runs at the start of the next task (the authors' code also rebuilds its
network only then, after evaluating task t). ``magnitudes=layer`` gives every (task, layer, target) its own α.
``results.json`` records, per task, the trained magnitudes and the mean update norms (``method_state``).

Variants (§3.5, Algorithm 1):
- SD-LoRA-RR (``rr_tasks``/``rr_ranks``, paper: μ=4, ν=8, r_μ=8, r_ν=6 with r_1=10; 0-based tasks as in the
  authors' code): task t uses rank r_t = the rank of the last entry of ``rr_tasks`` ≤ t. Implemented by
  zeroing and freezing (gradient mask) the trailing r − r_t components of A_t and B_t: the same function and
  the same number of trained parameters as a rank-r_t pair, but the checkpoint keeps the padded shape
  (simplification: storage is not reduced; resume and export stay layout-stable).
- SD-LoRA-KD (``kd_tau`` > 0, paper τ = 9·10⁻⁴; needs ``handover=keep`` or ``normalize``, since the reference
  hand-over renormalises past branches every task): after task t, per layer and target, solve the least
  squares Eq. 7, min_β ‖Ā_tB_t − Σ_{k<t} β_k Ā_kB_k‖_F over the past directions; where the residual is ≤ τ,
  the new direction is absorbed: α_k ← α_k + α_t β_k (Eq. 8 writes α_k + Δα_k; ours keeps the function exactly
  up to the residual) and A_t, B_t are zeroed there. The absorbed Δα are per (layer, target); they live in the
  per-layer scale of B_k, on top of the shared α_k. The zeroed slot keeps its shape in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.errors import ConfigError
from .base import Method, TaskContext, register_method

HANDOVERS = ("reference", "keep", "normalize")

# The authors' recipe (zyx303/WuYichen-97 SD-Lora-CL, models/sdlora.py and exps/sdlora_inr.json): SGD with
# momentum 0.9 and no weight decay over everything trainable, a constant lr (MultiStepLR milestones beyond the
# 20 epochs), ImageNet-R's 1e-2; LoRA on q and v (backbone/lora.py). Presets may set another lr per dataset.
REFERENCE_RECIPE: dict[str, Any] = {
    "train.optimizer": "sgd",
    "train.lr": 0.01,
    "train.schedule": "constant",
    "train.weight_decay": 0.0,
    "model.lora_targets": ["q", "v"],
}


@dataclass
class SDLoRAOptions:
    magnitudes: str = "shared"  # shared: one α per task for every layer and target (paper); layer: per both
    init_magnitude: float = 0.8  # α when a task starts (authors' code: 0.8, past ones re-created too; paper: 1)
    handover: str = "reference"  # reference: past B ← α₀·B/(‖B‖‖A‖) every task; keep; normalize (Eq. 4)
    rr_tasks: list[int] = field(default_factory=list)  # SD-LoRA-RR: 0-based tasks where rank drops ([4, 8])
    rr_ranks: list[int] = field(default_factory=list)  # ... to these ranks ([8, 6] in the paper, rank 10)
    kd_tau: float = 0.0  # SD-LoRA-KD: absorb where the least-squares residual ≤ τ (paper 9e-4); 0: off

    def __post_init__(self) -> None:
        """Options validate themselves, so a config is checked without building the method."""
        o = self
        if o.magnitudes not in ("shared", "layer"):
            raise ConfigError(f"method.magnitudes: expected shared or layer, got {o.magnitudes!r}")
        if o.handover not in HANDOVERS:
            raise ConfigError(f"method.handover: expected one of {', '.join(HANDOVERS)}, got {o.handover!r}")
        if not math.isfinite(o.init_magnitude):
            raise ConfigError(f"method.init_magnitude: expected a finite number, got {o.init_magnitude}")
        if o.handover == "reference" and o.init_magnitude == 0:
            raise ConfigError("method.init_magnitude: handover=reference re-creates past magnitudes at this value; "
                              "0 would switch every past task off")
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
        if o.kd_tau > 0 and o.handover == "reference":
            raise ConfigError(
                "method.kd_tau: SD-LoRA-KD folds a direction into the past branches' scale, which "
                "handover=reference renormalises away at the next task; use handover=keep or normalize with KD"
            )


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
    training_defaults: ClassVar[dict[str, Any]] = REFERENCE_RECIPE

    def __init__(self, options: SDLoRAOptions, weight: float = 1.0) -> None:
        super().__init__(options, weight)
        self.alpha = torch.zeros(0, dtype=torch.float64)  # magnitudes of finished tasks: (T,) or (T, L, K)
        self.handed = 0  # tasks 0..handed−1 have been handed over to fixed directions
        self.absorbed: list[list[list[bool]]] = []  # per task, layer, target: direction absorbed by KD
        self.param: nn.Parameter | None = None  # α of tasks 0..t while task t trains
        self._ref: torch.Tensor | None = None
        self._handles: list[Any] = []
        # diagnostics for results.json, per task t (row t, columns s ≤ t; NaN elsewhere): the trained α_s
        # (the mean over layers and targets with magnitudes=layer) and the mean ‖B_sA_s‖_F over layers and
        # targets when task t starts (after the hand-over) and when it ends
        self.history: dict[str, list[list[float]]] = {"alpha": [], "norm_start": [], "norm_end": []}

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

    @staticmethod
    @torch.no_grad()
    def update_norms(model: Any, upto: int) -> list[float]:
        """Mean ‖B_sA_s‖_F over layers and adapted targets, for each task s < ``upto``."""
        out = []
        for s in range(upto):
            norms = [float(torch.linalg.matrix_norm(torch.bmm(lora.B[s], lora.A[s]).double()).mean())
                     for lora in model.loras]
            out.append(sum(norms) / len(norms))
        return out

    # ---- hooks
    @torch.no_grad()
    def _hand_over(self, model: Any, upto: int) -> None:
        """Tasks before ``upto`` become fixed directions with a magnitude (``method.handover``).

        ``reference`` (the authors' code, which rebuilds its network for every task): every past branch is
        divided by ‖B_s‖_F‖A_s‖_F of its own factors and multiplied by the re-created magnitude
        ``init_magnitude``, per layer and target, at every new task; the orientation of the raw factors is
        kept (our B_s holds α_s·B_s, so the sign of α_s is divided out). ``normalize``: tasks handed over for
        the first time get ‖B_sA_s‖_F = |α_s| per projection. ``keep``: nothing changes."""
        o = self.options
        if o.handover == "reference":
            m0 = float(o.init_magnitude)
            for s in range(upto):
                for layer, lora in enumerate(model.loras):
                    for k in range(len(lora.targets)):
                        norm = float(lora.B[s][k].norm()) * float(lora.A[s][k].norm())
                        if norm > 0:
                            sign = -1.0 if s < len(self.alpha) and self.magnitude(s, layer, k) < 0 else 1.0
                            lora.B[s][k].mul_(m0 * sign / norm)
        elif o.handover == "normalize":
            for s in range(self.handed, upto):
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
        self.history["norm_start"].append(self.update_norms(model, t))
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
        m0 = float(self.options.init_magnitude)
        if self.options.handover == "reference":  # every past magnitude re-created at init_magnitude
            past = torch.full((t, *shape), m0, dtype=torch.float64)
        else:  # the learned magnitudes carry over
            past = self.alpha[:t].reshape(t, *shape)
        new = torch.full((1, *shape), m0, dtype=torch.float64)
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
        self.history["alpha"].append(alpha.reshape(t + 1, -1).mean(1).tolist())
        self.history["norm_end"].append(self.update_norms(model, t + 1))
        model.fold()

    def report(self) -> dict[str, Any]:
        """Per task (rows), the trained magnitudes α_s of tasks s ≤ t and the mean update norms ‖B_sA_s‖_F at
        the task's start (after the hand-over) and end."""
        return {"magnitudes": self.history["alpha"], "update_norm_start": self.history["norm_start"],
                "update_norm_end": self.history["norm_end"], "handover": self.options.handover,
                "init_magnitude": self.options.init_magnitude}

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
        for key, rows in self.history.items():  # ragged rows, NaN-padded into a square
            n = len(rows)
            table = torch.full((n, max([len(r) for r in rows], default=0)), math.nan, dtype=torch.float64)
            for i, row in enumerate(rows):
                table[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
            out[f"history.{key}"] = table
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "alpha" in tensors:
            self.alpha = tensors["alpha"].to(torch.float64)
        if "handed" in tensors:
            self.handed = int(tensors["handed"][0])
        if "absorbed" in tensors:
            flags = tensors["absorbed"].tolist()
            self.absorbed = [[[bool(v) for v in row] for row in task] for task in flags]
        for key in self.history:
            table = tensors.get(f"history.{key}")
            if table is not None:
                self.history[key] = [[v for v in row if not math.isnan(v)] for row in table.tolist()]
