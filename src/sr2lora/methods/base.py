"""The Method interface and registry: what makes one continual-learning method different from another.

The engine owns the training loop; a method only says (a) whether it uses LoRA and the previous model's
features, (b) its extra loss on each current-task batch, and (c) what to do before/after a task. Each method is
one small file that subclasses :class:`Method`, declares its options as a dataclass ``Options`` (exposed on the
command line as ``method.<field>=...``) and registers itself with :func:`register_method`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.registry import Registry

if TYPE_CHECKING:
    from ..models.backbone import CILModel, ForwardOut


@dataclass
class NoOptions:
    """A method without options of its own."""


@dataclass
class TaskContext:
    """What a hook may look at: the task index, the model, the task's train loader and the device."""

    task: int
    model: CILModel
    loader: Any = None
    device: torch.device | None = None
    num_tasks: int = 0


class Method:
    """Base class. Subclasses set ``name`` and may override the hooks; the defaults are plain per-task LoRA."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    uses_lora: ClassVar[bool] = True  # False: frozen backbone, heads only
    needs_old: ClassVar[bool] = False  # True: the engine runs the previous model on each batch (no grad)
    needs_layers: ClassVar[bool] = False  # True: per-layer [CLS] features are needed (new and old)
    single_task: ClassVar[bool] = False  # True: the engine runs one task holding every class (joint bound)
    rewrites_past: ClassVar[bool] = False  # True: later tasks rescale past LoRA (only final model reloads)
    trains: ClassVar[bool] = True  # False: training-free (no epochs at all; the classifier does everything)
    default_classifier: ClassVar[str] = "ca"  # the classifier with classifier.kind=auto (sr2lora.classifiers)
    # Training settings of the method's own (dotted config keys -> values), e.g. the optimiser and lr its
    # reference trains with. They replace only the built-in defaults: a key the preset, its ``per_method``
    # section or the command line sets wins (sr2lora.config.apply_training_defaults).
    training_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: Any, weight: float = 1.0) -> None:
        self.options = options
        self.weight = weight

    def check_model(self, num_layers: int) -> None:
        """Check the options that depend on the backbone (its ``num_layers`` blocks) before any work; ConfigError
        naming the option. Nothing to check by default."""

    def trains_task(self, t: int) -> bool:
        """Whether the engine runs task t's training epochs (default: :attr:`trains`, for every task)."""
        return self.trains

    # ---- hooks (Avalanche-style) -------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        """Called after the task's LoRA pair and head exist, before its optimiser is built."""

    def trainable_parameters(self, ctx: TaskContext) -> list[torch.nn.Parameter]:
        """Parameters the task's optimiser updates (default: task t's LoRA factors and head)."""
        if self.uses_lora:
            return ctx.model.task_parameters(ctx.task)
        return list(ctx.model.heads[ctx.task].parameters())

    def regularizer(self, new: ForwardOut, old: ForwardOut | None, ctx: TaskContext) -> torch.Tensor | None:
        """The extra loss on a current-task batch (multiplied by ``method.weight``), or None."""
        return None

    def after_task(self, ctx: TaskContext) -> None:
        """Called after the task's training (LoRA folded), before statistics and classifier alignment."""

    def report(self) -> dict[str, Any]:
        """What the method records in results.json under ``method_state`` (JSON-ready); empty: nothing."""
        return {}

    # ---- state carried across tasks (checkpointed) ------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        return None


METHODS: Registry[type[Method]] = Registry("method", "method.name")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``method.name=<cls.name>``."""
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    return METHODS.register(cls.name, cls)


def method_names() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def create_method(name: str, options: dict[str, Any], weight: float) -> Method:
    cls = get_method_class(name)
    return cls(cls.Options(**options), weight)


# ---------------------------------------------------------------- layer selection (ablation)


def select_layers(spec: Any, num_layers: int, seed: int = 0) -> list[int]:
    """Which blocks (0-based) enter the relation: ``all``, ``first:k``, ``last:k``, ``random:k`` or a list."""
    if spec == "all":
        return list(range(num_layers))
    if isinstance(spec, list):
        idx = [int(i) for i in spec]
        if not idx or any(not 0 <= i < num_layers for i in idx) or len(set(idx)) != len(idx):
            raise ConfigError(f"method.layers: expected distinct block indices in 0..{num_layers - 1}, got {spec}")
        return sorted(idx)
    if isinstance(spec, str) and ":" in spec:
        kind, _, k_str = spec.partition(":")
        try:
            k = int(k_str)
        except ValueError:
            k = -1
        if kind in ("first", "last", "random") and 1 <= k <= num_layers:
            if kind == "first":
                return list(range(k))
            if kind == "last":
                return list(range(num_layers - k, num_layers))
            rng = np.random.default_rng(seed)
            return sorted(int(i) for i in rng.choice(num_layers, size=k, replace=False))
    raise ConfigError(
        f"method.layers: expected all, first:k, last:k, random:k (1 <= k <= {num_layers}) or a list of block "
        f"indices, got {spec!r}"
    )


@dataclass
class RelationOptions:
    """Options shared by the relation/feature regularisers."""

    layers: Any = "all"  # all | first:k | last:k | random:k | [i, j, ...] (0-based blocks)
    layers_seed: int = 0  # seed of random:k
    relation_norm: str = "none"  # none (reference) | l2 | trace
    beta: float = 1.0  # smooth-L1 β

    def __post_init__(self) -> None:
        """Options validate themselves, so a config is checked without building the method."""
        from .losses import RELATION_NORMS

        if self.relation_norm not in RELATION_NORMS:
            raise ConfigError(
                f"method.relation_norm: expected one of {', '.join(RELATION_NORMS)}, got {self.relation_norm!r}")


class TrainingFree(Method):
    """A method without any training: a frozen backbone (no LoRA, no epochs) and its classifier."""

    uses_lora: ClassVar[bool] = False
    trains: ClassVar[bool] = False


class LayerRegularizer(Method):
    """A method whose loss compares the new and the previous model's per-layer [CLS] features."""

    Options: ClassVar[type] = RelationOptions
    needs_old: ClassVar[bool] = True
    needs_layers: ClassVar[bool] = True
    # a loss of sr2lora.methods.losses' signature (new, old, relation_norm=, beta=); set with staticmethod(...)
    relation_loss: ClassVar[Callable[..., torch.Tensor] | None] = None

    def __init__(self, options: Any, weight: float = 1.0) -> None:
        super().__init__(options, weight)
        self.layer_index: list[int] | None = None
        self.last_shapes: tuple[torch.Size, torch.Size] | None = None  # (new, old) shapes fed to the loss

    def check_model(self, num_layers: int) -> None:
        if hasattr(self.options, "layers"):  # a method that selects its own layers has no such option
            select_layers(self.options.layers, num_layers, getattr(self.options, "layers_seed", 0))

    def selected(self, h: torch.Tensor) -> torch.Tensor:
        if self.layer_index is None:
            self.layer_index = select_layers(self.options.layers, h.shape[1], self.options.layers_seed)
        if len(self.layer_index) == h.shape[1]:
            return h
        return h[:, self.layer_index]

    def regularizer(self, new: ForwardOut, old: ForwardOut | None, ctx: TaskContext) -> torch.Tensor | None:
        if old is None:
            return None
        hn, ho = self.selected(new.layers), self.selected(old.layers)
        self.last_shapes = (hn.shape, ho.shape)
        return self.layer_loss(hn, ho)

    def layer_loss(self, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """The loss between the selected layers' features (B, L', d) of the new and the previous model: by
        default :attr:`relation_loss` with the run's ``relation_norm`` and β; override for any other loss."""
        if self.relation_loss is None:
            raise NotImplementedError(f"{type(self).__name__}: set relation_loss or override layer_loss")
        o = self.options
        return self.relation_loss(new, old, relation_norm=o.relation_norm, beta=o.beta)
