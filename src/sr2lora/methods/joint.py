"""`joint`: the non-incremental upper bound: one LoRA and one head trained on every class at once.

The engine reads :attr:`Method.single_task` and cuts the dataset into a single task holding all classes (the
run's class order is kept; ``scenario.init_cls``/``increment`` are ignored), so this is plain LoRA fine-tuning
with the same budget as the incremental runs (``train.epochs`` passes over every training image, the same
optimiser and schedule). ``results.json`` then has ``num_tasks`` 1 and a 1×1 accuracy matrix. The single head
sees every class, and with the ``ca`` classifier it is then aligned like the final head of every incremental
run (``classifiers/ca.py`` aligns after task 0 when the run has a single task; an incremental sequence is
aligned from its second task on, as the reference).
"""

from __future__ import annotations

from typing import ClassVar

from .base import Method, register_method


@register_method
class Joint(Method):
    name = "joint"
    summary = "upper bound: one LoRA and one head trained on all classes at once (one task, same epochs)"
    single_task: ClassVar[bool] = True
