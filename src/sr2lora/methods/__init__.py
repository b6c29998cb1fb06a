"""Continual-learning methods, registered by name. Importing this package registers all of them."""

from . import entrywise, feature_distill, frozen, seqlora, sr2lora  # noqa: F401  (registration)
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
