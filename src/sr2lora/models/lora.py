"""Per-task LoRA on a fused qkv Linear, with past tasks folded into one fixed weight.

timm fuses q, k, v into one ``qkv`` Linear (out = 3·d). Task s owns, for each adapted target k ∈ {q, k, v},
a pair A_{s,k} (r×d, Kaiming-uniform a=√5) and B_{s,k} (d×r, zeros); the effective weight of target k with tasks
0..n−1 active is W_k + Σ_{s<n} B_{s,k} A_{s,k} (no α/r scaling, no dropout: docs/method.md).

Past branches are frozen, so their sum is folded into ``folded_weight`` = W + Σ_{s<n_folded} B_s A_s (recomputed
from W and the factors, not accumulated, so no drift). A forward with ``active`` tasks uses:
- the folded weight plus the low-rank path of the branches not yet folded (the fast path: while task t trains,
  ``active = t+1`` is folded weight + branch t, and the previous model ``active = t`` is the folded weight alone);
- or, when fewer tasks are active than are folded (analysis of an older model) or folding is disabled,
  the pre-trained W plus every active branch's low-rank path (the reference's way, kept for tests/benchmarks).

The seam for methods that change the parametrisation (public; a method should need nothing else):
- :meth:`LoRAQKV.set_branch_scales` / :meth:`LoRAQKV.clear_branch_scales`: per-task multipliers γ_s, shape (n,)
  or (n, n_targets), or a callable returning them that the layer calls on every forward (so γ may be computed
  from a method's trainable parameters and gradients reach them). While set, forward is
  W x + Σ_{s<n} γ_s B_s A_s x with every branch unfolded (one low-rank product over all active branches);
  ``fold`` ignores them. SD-LoRA is the user.
- :meth:`LoRAQKV.set_down_projection` / :meth:`LoRAQKV.down_projection`: task s's A_{s,k} (r × d) for one
  target or all, without knowing how the factors are stored. InfLoRA is the user.
The model wrapper (:class:`sr2lora.models.backbone.CILModel`) applies both to every layer and adds
``capture_qkv_inputs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fastpath import linear

TARGET_INDEX = {"q": 0, "k": 1, "v": 2}

# Per-task branch multipliers: a tensor (n,) or (n, n_targets), or a callable returning one on every forward.
BranchScales = torch.Tensor | Callable[[], torch.Tensor]


class LoRAQKV(nn.Module):
    """A frozen fused qkv Linear plus per-task low-rank updates on a subset of q, k, v."""

    def __init__(self, base: nn.Linear, targets: Sequence[str] = ("k", "v"), rank: int = 10) -> None:
        super().__init__()
        if base.out_features % 3 != 0:
            raise ValueError(f"qkv Linear must have 3·d outputs, got {base.out_features}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_features = base.in_features
        self.head_out = base.out_features // 3
        self.targets = sorted(targets, key=TARGET_INDEX.__getitem__)
        self.target_index = [TARGET_INDEX[t] for t in self.targets]
        self.rank = rank
        self.A = nn.ParameterList()  # per task: (n_targets, r, d_in)
        self.B = nn.ParameterList()  # per task: (n_targets, d_out, r)
        self.register_buffer("folded_weight", base.weight.detach().clone(), persistent=False)
        self.n_folded = 0
        self.active = 0  # number of task branches used by forward (set through the model)
        self.fold_enabled = True
        self.scales: BranchScales | None = None  # set through set_branch_scales; None: the plain sum

    @property
    def num_tasks(self) -> int:
        return len(self.A)

    def add_task(self) -> None:
        """Append a new (A, B) pair: A Kaiming-uniform(a=√5) like nn.Linear, B zeros, so the update starts at 0."""
        w = self.base.weight
        a = torch.empty(len(self.targets), self.rank, self.in_features, device=w.device, dtype=w.dtype)
        for k in range(len(self.targets)):
            nn.init.kaiming_uniform_(a[k], a=math.sqrt(5))
        b = torch.zeros(len(self.targets), self.head_out, self.rank, device=w.device, dtype=w.dtype)
        self.A.append(nn.Parameter(a))
        self.B.append(nn.Parameter(b))

    # ---- the parametrisation seam
    def set_branch_scales(self, scales: BranchScales) -> None:
        """Multiply branch s by γ_s in every forward until :meth:`clear_branch_scales`.

        ``scales``: a tensor of shape (n,) (one γ per task) or (n, n_targets) (per task and adapted target, in
        the order of ``self.targets``) with n ≥ the number of active tasks; or a zero-argument callable
        returning such a tensor, called at every forward of this layer (return a function of your trainable
        parameters and gradients reach them). While set, forward uses W and every active branch unfolded,
        so it is slower than the folded path; ``fold`` and checkpoints ignore the scales. To keep an effect
        after clearing, bake it into the factors (e.g. scale ``B``) and call ``fold`` again.
        """
        self.scales = scales

    def clear_branch_scales(self) -> None:
        """Back to the plain sum of branches (and the folded fast path). Does not refold: a method that changed
        the factors while scales were set calls ``fold`` itself."""
        self.scales = None

    def branch_scales(self) -> torch.Tensor | None:
        """The multipliers the next forward uses (the callable's value when a callable was set), or None."""
        s = self.scales
        return s() if callable(s) else s

    def _target_slots(self, target: str | None) -> list[int]:
        if target is None:
            return list(range(len(self.targets)))
        if target not in self.targets:
            raise ValueError(f"target {target!r} is not adapted by this layer (adapted: {self.targets})")
        return [self.targets.index(target)]

    def down_projection(self, task: int, target: str) -> torch.Tensor:
        """A view (r × d_in) of task ``task``'s down-projection A for ``target`` ('q', 'k' or 'v')."""
        return self.A[task][self._target_slots(target)[0]]

    @torch.no_grad()
    def set_down_projection(self, task: int, matrix: torch.Tensor, target: str | None = None,
                            freeze: bool = False) -> None:
        """Write ``matrix`` (r × d_in) as task ``task``'s A for ``target`` (None: every adapted target).

        Copied into the existing parameter (cast to its dtype and device), so an optimiser that already holds
        it keeps working; ``freeze=True`` also stops it from being trained (``requires_grad`` False). The
        folded weight is not updated: call ``fold`` if the task is already folded.
        """
        a = self.A[task]
        if tuple(matrix.shape) != (self.rank, self.in_features):
            raise ValueError(
                f"down-projection of task {task}: expected shape ({self.rank}, {self.in_features}) "
                f"(rank × input features), got {tuple(matrix.shape)}"
            )
        m = matrix.to(a.dtype).to(a.device)
        for k in self._target_slots(target):
            a[k].copy_(m)
        if freeze:
            a.requires_grad_(False)

    def task_delta(self, s: int) -> torch.Tensor:
        """B_s A_s for each target, scattered into a (3·d_out, d_in) matrix (zeros on untargeted rows)."""
        delta = torch.zeros_like(self.base.weight)
        d3 = delta.view(3, self.head_out, self.in_features)
        prod = torch.bmm(self.B[s], self.A[s])  # (n_targets, d_out, d_in)
        for k, i in enumerate(self.target_index):
            d3[i] += prod[k]
        return delta

    @torch.no_grad()
    def fold(self, upto: int | None = None) -> None:
        """Fold branches 0..upto−1 (default: all) into ``folded_weight``, recomputed from W and the factors
        (branch scales are not applied: bake them into the factors first)."""
        upto = self.num_tasks if upto is None else upto
        w = self.base.weight.detach().to(torch.float64).clone()
        for s in range(upto):
            w += self.task_delta(s).detach().to(torch.float64)
        self.folded_weight.copy_(w.to(self.folded_weight.dtype))
        self.n_folded = upto

    def _branch(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """Low-rank output of branch s for each target: (..., n_targets, d_out)."""
        a = self.A[s]
        z = F.linear(x, a.reshape(-1, self.in_features).to(x.dtype))  # (..., n_targets*r)
        z = z.unflatten(-1, (len(self.targets), self.rank))
        return torch.einsum("...kr,kdr->...kd", z, self.B[s].to(x.dtype))

    def _scaled_delta(self, x: torch.Tensor, n: int, scales: torch.Tensor) -> torch.Tensor:
        """Σ_{s<n} γ_s B_s A_s x per target, (..., n_targets, d_out): all branches in one low-rank product."""
        k = len(self.targets)
        coef = scales[:n].to(x.dtype).reshape(n, -1).expand(n, k)  # (n, n_targets)
        a = torch.cat([self.A[s] for s in range(n)], dim=1).to(x.dtype)  # (n_targets, Σr, d_in)
        b = torch.cat([self.B[s].to(x.dtype) * coef[s].view(k, 1, 1) for s in range(n)], dim=2)
        z = F.linear(x, a.reshape(-1, self.in_features)).unflatten(-1, (k, a.shape[1]))
        return torch.einsum("...kr,kdr->...kd", z, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.active
        scales = self.branch_scales() if n > 0 else None
        if scales is not None:  # per-task multipliers (e.g. trainable magnitudes): W plus every branch, scaled
            bias = None if self.base.bias is None else self.base.bias.to(x.dtype)
            y = F.linear(x, self.base.weight.to(x.dtype), bias)
            return self._add_delta(y, self._scaled_delta(x, n, scales))
        if self.fold_enabled and self.n_folded <= n:
            weight, first = self.folded_weight, self.n_folded
        else:
            weight, first = self.base.weight, 0
        y = linear(x, weight.to(x.dtype) if weight.dtype != x.dtype else weight,  # fused on CPU without autograd
                   None if self.base.bias is None else self.base.bias.to(x.dtype))
        if first >= n:
            return y
        delta = self._branch(x, first)
        for s in range(first + 1, n):
            delta = delta + self._branch(x, s)
        return self._add_delta(y, delta)

    def _add_delta(self, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """y (..., 3·d_out) plus each target's delta (..., n_targets, d_out) on its q/k/v slice."""
        y3 = y.unflatten(-1, (3, self.head_out))
        if self.target_index == list(range(self.target_index[0], self.target_index[-1] + 1)):
            lo, hi = self.target_index[0], self.target_index[-1] + 1
            y3 = torch.cat([y3[..., :lo, :], y3[..., lo:hi, :] + delta, y3[..., hi:, :]], dim=-2)
        else:  # e.g. q and v: add each target's delta to its slice
            parts = [y3[..., i, :] for i in range(3)]
            for k, i in enumerate(self.target_index):
                parts[i] = parts[i] + delta[..., k, :]
            y3 = torch.stack(parts, dim=-2)
        return y3.flatten(-2)

    def extra_repr(self) -> str:
        return f"targets={self.targets}, rank={self.rank}, tasks={self.num_tasks}, folded={self.n_folded}"
