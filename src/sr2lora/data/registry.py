"""Dataset registry: a name in ``data.dataset`` maps to a builder ``fn(cfg: DataConfig) -> DatasetBundle``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.registry import Registry
from .base import DataError, DatasetBundle

if TYPE_CHECKING:
    from ..config import DataConfig

Builder = Callable[["DataConfig"], DatasetBundle]
DATASETS: Registry[Builder] = Registry("dataset", "data.dataset", error=DataError)


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Register ``fn(cfg: DataConfig) -> DatasetBundle`` under ``name``."""
    return DATASETS.decorator(name)


def dataset_names() -> list[str]:
    return DATASETS.names()


def build_dataset(cfg: DataConfig) -> DatasetBundle:
    """Build the dataset named by ``cfg.dataset``; the error lists the valid names."""
    return DATASETS.get(cfg.dataset)(cfg)
