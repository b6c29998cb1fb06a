"""Dataset registry: a name in ``data.dataset`` maps to a builder ``fn(cfg: DataConfig) -> DatasetBundle``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import DataError, DatasetBundle

if TYPE_CHECKING:
    from ..config import DataConfig

_DATASETS: dict[str, Callable[[DataConfig], DatasetBundle]] = {}


def register_dataset(name: str) -> Callable:
    """Register ``fn(cfg: DataConfig) -> DatasetBundle`` under ``name``."""

    def deco(fn: Callable[[DataConfig], DatasetBundle]) -> Callable[[DataConfig], DatasetBundle]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        _DATASETS[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(cfg: DataConfig) -> DatasetBundle:
    """Build the dataset named by ``cfg.dataset``; the error lists the valid names."""
    if cfg.dataset not in _DATASETS:
        raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; choose one of {', '.join(dataset_names())}")
    return _DATASETS[cfg.dataset](cfg)
