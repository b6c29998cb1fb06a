"""`ncm`: SimpleCIL — the frozen backbone's final feature and a cosine nearest-class-mean classifier.

Training-free: no LoRA, no epochs; after each task the class means of its new classes are computed (test
transform) and the run predicts argmax_c cos(f, μ_c) (see docs/classifiers.md).
"""

from __future__ import annotations

from typing import ClassVar

from .base import TrainingFree, register_method


@register_method
class NCM(TrainingFree):
    name = "ncm"
    summary = "training-free: frozen backbone + cosine nearest class mean (SimpleCIL)"
    default_classifier: ClassVar[str] = "ncm"
