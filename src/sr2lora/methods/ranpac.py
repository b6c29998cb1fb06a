"""`ranpac` and `ranpac-fsa`: RanPAC's random-projection ridge head on frozen features (see docs/classifiers.md).

* `ranpac`: training-free; the frozen backbone's features feed the ``ridge`` classifier (random projection,
  ReLU, closed-form ridge regression over accumulated statistics).
* `ranpac-fsa`: first-session adaptation; task 1 trains a LoRA branch (and its head, with cross-entropy)
  with the run's optimiser, schedule and epochs, then the backbone stays frozen for the rest of the sequence
  (later tasks train nothing: their LoRA branches keep B = 0, so they add nothing) and the ridge head
  classifies. RanPAC adapts with its own PETL modules (adapters, SSF, VPT) and SGD; this uses the toolkit's LoRA.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Method, TrainingFree, register_method


@register_method
class RanPAC(TrainingFree):
    name = "ranpac"
    summary = "training-free: frozen backbone + random projection + closed-form ridge head (RanPAC, no adaptation)"
    default_classifier: ClassVar[str] = "ridge"


@register_method
class RanPACFirstSession(Method):
    name = "ranpac-fsa"
    summary = "RanPAC: LoRA trained on task 1 only, then frozen; random projection + ridge head"
    default_classifier: ClassVar[str] = "ridge"

    def trains_task(self, t: int) -> bool:
        return t == 0
