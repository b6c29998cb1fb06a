"""Datasets: a registry of builders returning labelled images (see :mod:`sr2lora.data.base`)."""

from . import cifar100, folders, imagenet_r, openclipart, smoke, xdomain  # noqa: F401  (registration)
from .base import ArrayImages, DataError, DatasetBundle, FileImages, LabeledImages
from .registry import build_dataset, dataset_names, register_dataset

__all__ = [
    "ArrayImages",
    "DataError",
    "DatasetBundle",
    "FileImages",
    "LabeledImages",
    "build_dataset",
    "dataset_names",
    "register_dataset",
]
