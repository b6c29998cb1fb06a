"""One optimisation step of a task: the step training runs and the benchmarks time."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from ..methods import Method, TaskContext
from ..models.backbone import CILModel


def training_step(
    model: CILModel,
    method: Method,
    ctx: TaskContext,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    offset: int,
    *,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
    check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], None] | None = None,
    grad_sync: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One optimisation step of task ``ctx.task`` on (x, y): the step training runs (and the benchmarks time).

    The frozen stem once; when the method needs it, the previous model (branches 0..t−1) without autograd, run
    first so that its working memory is freed before the current model's activations are held; the current
    model (branches 0..t) from the same tokens; the task-local loss plus ``method.weight`` × the method's
    regulariser, ``check(loss, ce, reg)`` (may raise), backward, ``grad_sync()`` (the distributed all-reduce),
    optimiser step. (The reference's way, the previous model after the current one with autograd on, lives in
    ``benchmarks/step.py``, which times the two against each other.)
    Returns (loss, ce, reg), detached.
    """
    t = ctx.task
    use_old = method.needs_old and t > 0
    with autocast() if autocast is not None else nullcontext():
        tokens = model.embed(x)  # the frozen stem, shared by both forwards
        old = None
        if use_old:  # first, while no activations are held: its working memory adds nothing
            with torch.no_grad():
                old = model(x, tasks=t, layers=method.needs_layers, logits=False, tokens=tokens)
        new = model(x, tasks=t + 1 if method.uses_lora else 0, heads=t + 1, layers=method.needs_layers,
                    logits=False, tokens=tokens)
        logits = model.heads.head_logits(new.feature, t)
        target = y - offset
        ce = task_loss(logits, target) if task_loss is not None else F.cross_entropy(logits.float(), target)
        reg = method.regularizer(new, old, ctx)
    loss = ce if reg is None else ce + method.weight * reg
    if check is not None:
        check(loss, ce, reg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_sync is not None:
        grad_sync()
    opt.step()
    return loss.detach(), ce.detach(), None if reg is None else reg.detach()
