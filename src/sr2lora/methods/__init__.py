"""Continual-learning methods, registered by name. Importing this package registers all of them."""

from . import (  # noqa: F401  (registration)
    entrywise,
    feature_distill,
    frozen,
    inflora,
    joint,
    ncm,
    ranpac,
    sdlora,
    seqlora,
    sr2lora,
)
from .base import (
    Method,
    TaskContext,
    create_method,
    get_method_class,
    method_names,
    register_method,
    select_layers,
)

__all__ = [
    "Method",
    "TaskContext",
    "create_method",
    "get_method_class",
    "method_names",
    "register_method",
    "select_layers",
]
