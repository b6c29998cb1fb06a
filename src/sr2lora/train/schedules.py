"""Learning-rate schedules by name (``train.schedule``): every schedule answers the same question, the lr of one step.

Each schedule is a function ``(base_lr, epoch, epochs, step, total_steps, warmup) -> lr`` of the epoch (0-based),
the task's step counter (0-based, over all its epochs) and the task's number of steps, so the engine calls one
function per step whatever the schedule; a schedule that changes per epoch ignores the step and vice versa. The
config accepts exactly the names of :data:`SCHEDULES`. This module imports nothing heavy, so the config can use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# (base_lr, epoch, epochs, step, total_steps, warmup) -> the lr of that step
Schedule = Callable[[float, int, int, int, int, int], float]


def reference_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The reference's per-epoch schedule lr·cos(99π·e / (200·(E−1))) (constant when E = 1)."""
    if epochs <= 1:
        return base_lr
    return base_lr * math.cos(99 * math.pi * epoch / (200 * (epochs - 1)))


def cosine_step_lr(base_lr: float, step: int, total: int, warmup: int) -> float:
    """Per-step cosine decay to 0 with linear warm-up (``train.schedule=cosine-step``)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _reference(base_lr: float, epoch: int, epochs: int, step: int, total_steps: int, warmup: int) -> float:
    return reference_lr(base_lr, epoch, epochs)


def _constant(base_lr: float, epoch: int, epochs: int, step: int, total_steps: int, warmup: int) -> float:
    return base_lr


def _cosine_step(base_lr: float, epoch: int, epochs: int, step: int, total_steps: int, warmup: int) -> float:
    return cosine_step_lr(base_lr, step, total_steps, warmup)


SCHEDULES: dict[str, Schedule] = {
    "reference": _reference,  # the default: what the reference trains with
    "cosine-step": _cosine_step,
    "constant": _constant,
}


def schedule_names() -> tuple[str, ...]:
    """The names ``train.schedule`` accepts, in the order the config's error message lists them."""
    return tuple(SCHEDULES)


def lr_at(name: str, base_lr: float, epoch: int, epochs: int, step: int, total_steps: int, warmup: int) -> float:
    """The lr of step ``step`` (in epoch ``epoch``) of a task under schedule ``name``.

    ``name`` is validated by the config; an unknown one here is a programming error, hence KeyError with the
    names that exist.
    """
    try:
        fn = SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}") from None
    return fn(base_lr, epoch, epochs, step, total_steps, warmup)
