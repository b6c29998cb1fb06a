"""The classifier interface and registry: what turns the final [CLS] feature into a prediction.

The engine trains the per-task linear heads with cross-entropy during a task (that loss is what drives LoRA),
then, with the model as it is after that task, hands the classifier the training features of the task's new
classes (:meth:`Classifier.fit_task`) and lets it finish the task (:meth:`Classifier.finish_task`). Evaluation,
``sr2lora predict`` and ``export`` use the classifier's logits, never the engine's own guess. Every classifier
keeps only statistics of the classes it has seen, so its state after task t is small, exact and goes into the
checkpoint (resume is exact). Registered kinds: ``ca`` (the heads after Gaussian classifier alignment), ``ncm``
(cosine nearest class mean) and ``ridge`` (RanPAC's random projection + closed-form ridge regression).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..core.errors import TrainingError
from ..core.registry import Registry

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..models.heads import TaskHeads


def check_finite_after(stage: str, t: int, tensors: dict[str, torch.Tensor], fix: str) -> None:
    """Raise TrainingError when a stage left a NaN/inf in ``tensors`` (name -> tensor), naming the stage, the
    first offending tensors and ``fix`` (the setting to change): a diverged stage must stop the run rather
    than let it finish with a result it knows to be wrong."""
    bad = [name for name, v in tensors.items() if v.numel() and not bool(torch.isfinite(v.detach()).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise TrainingError(
            f"task {t + 1}: {stage} produced non-finite values (NaN/inf) in {', '.join(bad[:5])}{more}; {fix}. "
            f"The last complete task's checkpoint is kept."
        )


class Classifier:
    """Base class; subclasses set ``kind`` and implement the hooks. ``offsets``: the scenario's task offsets."""

    kind: ClassVar[str] = ""
    # True: the per-task heads are what predicts (their state lives in the model, not in state_tensors)
    uses_heads: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, dim: int, offsets: Sequence[int]) -> None:
        self.cfg = cfg
        self.dim = dim
        self.offsets = [int(o) for o in offsets]

    # ---- the task loop ----------------------------------------------------------------------
    def fit_task(
        self, t: int, features: torch.Tensor, labels: torch.Tensor, classes: list[int],
        class_names: Sequence[str] | None = None,
    ) -> None:
        """Take the training features (N, d) and run labels of task t's new ``classes`` (model after task t)."""
        raise NotImplementedError

    def check_budget(self) -> None:
        """Before any work: ConfigError naming the key when the settings need more memory than the machine has
        (nothing to check by default)."""

    def finish_task(self, t: int, heads: TaskHeads, seed: int, single_task: bool = False) -> None:
        """Make the classifier ready to predict every class seen after task t (``seed``: task t's seed)."""

    def head(self, heads: TaskHeads, t: int) -> nn.Module:
        """A module mapping features (B, d) to logits (B, C_t) over the classes seen after task t."""
        raise NotImplementedError

    def logits(self, features: torch.Tensor, heads: TaskHeads, t: int) -> torch.Tensor:
        """Logits over the classes seen after task t, exactly as :meth:`head` computes them (the module is built
        once per task and reused for every evaluation batch; :meth:`fit_task`/:meth:`finish_task` drop it)."""
        cached = getattr(self, "_head_cache", None)
        if cached is None or cached[0] != t or cached[1] is not heads:
            cached = self._head_cache = (t, heads, self.head(heads, t))
        return cached[2](features)

    def drop_cached_head(self) -> None:
        self._head_cache = None

    # ---- what the run reports and keeps ------------------------------------------------------
    @property
    def fallback(self) -> list[int]:
        """Classes whose statistics had to fall back to a default (too few samples)."""
        return []

    def summary(self) -> dict:
        """JSON facts about the classifier for results.json (kind, chosen λ, ...)."""
        return {"kind": self.kind}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        return None


CLASSIFIERS: Registry[type[Classifier]] = Registry("classifier", "classifier.kind")


def register_classifier(cls: type[Classifier]) -> type[Classifier]:
    """Class decorator: make ``cls`` available as ``classifier.kind=<cls.kind>``."""
    return CLASSIFIERS.register(cls.kind, cls)


def classifier_kinds() -> list[str]:
    return CLASSIFIERS.names()


def resolve_kind(cfg: RunConfig) -> str:
    """``classifier.kind``, or the method's own default classifier when it is ``auto``."""
    if cfg.classifier.kind != "auto":
        return cfg.classifier.kind
    from ..methods import get_method_class

    return get_method_class(cfg.method.name).default_classifier


def create_classifier(cfg: RunConfig, dim: int, offsets: Sequence[int]) -> Classifier:
    """The classifier the run's config asks for (``classifier.kind``, or the method's default)."""
    return CLASSIFIERS.get(resolve_kind(cfg))(cfg, dim, offsets)
