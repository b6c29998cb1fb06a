"""The run's seeding rule: every random draw of task t comes from a seed derived from (run seed, t, purpose).

Seeding each task from (seed, t) rather than from what ran before it is what makes a run resumed from the
checkpoint of task t−1 identical to an uninterrupted one, and what lets a finished run's frozen backbone be
rebuilt exactly (the random init of ``model.pretrained=false`` is drawn under ``task_seed(seed, -1)``).
"""

from __future__ import annotations

# the task index whose seed the backbone is built under (before the first task)
BACKBONE_TASK = -1


def task_seed(seed: int, task: int, salt: int = 0) -> int:
    """A per-task seed, so each task's randomness does not depend on what ran before it."""
    return (seed * 1_000_003 + task * 7_919 + salt * 104_729) % (2**31 - 1)
