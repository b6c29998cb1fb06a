"""The paper's benchmarks end to end: `sr2lora run` on tiny copies of each dataset's on-disk format, presets of
the whole grid, missing-data and missing-weights errors, and local weight files."""

import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_datasets import (
    CUB_CLASSES,
    R_WNIDS,
    make_cifar,
    make_cub_official,
    make_imagenet_r,
    make_lists,
    make_presplit,
    tree_digest,
)

from conftest import read_results, run_cli
from sr2lora.config import load_config, preset_names
from sr2lora.data.registry import build_dataset

MICRO = ["data.image_size=32", "train.epochs=1", "ca.epochs=2", "train.batch_size=4", "data.num_workers=0"]


def run_on(tmp_path, dataset: str, root, n_classes: int, *extra: str) -> dict:
    out = tmp_path / f"run-{dataset}"
    code = run_cli(
        "run", "--preset", "smoke", "--quiet", "--out", out, f"data.dataset={dataset}", f"data.root={root}",
        "scenario.init_cls=1", "scenario.increment=1", *MICRO, *extra,
    )
    assert code == 0
    r = read_results(out)
    assert r["num_tasks"] == n_classes and len(r["class_order"]) == n_classes
    return r


def check_remap(r: dict, cfg_overrides: list[str]) -> None:
    """The class of label i is the dataset class class_order[i]; names follow the same order."""
    cfg = load_config("smoke", cfg_overrides)
    bundle = build_dataset(cfg.data)
    assert r["class_names"] == [bundle.class_names[c] for c in r["class_order"]]
    assert sorted(r["class_order"]) == list(range(bundle.num_classes))


def test_cifar100_end_to_end(tmp_path, monkeypatch):
    import hashlib

    from sr2lora.data import cifar100

    make_cifar(tmp_path / "cifar")
    folder = tmp_path / "cifar" / "cifar-100-python"
    sums = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in ("train", "test", "meta")}
    monkeypatch.setattr(cifar100, "EXPECTED_MD5", sums)  # generated files cannot match the official sums
    before = tree_digest(tmp_path / "cifar")
    r = run_on(tmp_path, "cifar100", tmp_path / "cifar", 3)
    assert tree_digest(tmp_path / "cifar") == before
    check_remap(r, ["data.dataset=cifar100", f"data.root={tmp_path / 'cifar'}"])


def test_imagenet_r_end_to_end(tmp_path):
    root = make_imagenet_r(tmp_path / "data")
    train_list, _ = make_lists(tmp_path / "lists")
    before = tree_digest(root)
    r = run_on(tmp_path, "imagenet-r", root, len(R_WNIDS), f"data.split_file={train_list}")
    assert tree_digest(root) == before
    assert sum(r["task_test_counts"]) == len(R_WNIDS)  # one test image per class in the tiny lists


@pytest.mark.parametrize("dataset", ["imagenet-a", "cub200"])
def test_presplit_end_to_end(tmp_path, dataset):
    root = tmp_path / dataset
    classes = ["ant", "bee", "cat"]
    make_presplit(root, classes)
    before = tree_digest(root)
    r = run_on(tmp_path, dataset, root, 3)
    assert tree_digest(root) == before
    assert sum(r["task_test_counts"]) == 3 * 2
    check_remap(r, [f"data.dataset={dataset}", f"data.root={root}"])


def test_cub_official_layout_end_to_end(tmp_path):
    cub = make_cub_official(tmp_path / "cub")
    before = tree_digest(cub)
    r = run_on(tmp_path, "cub200", cub, len(CUB_CLASSES))
    assert tree_digest(cub) == before
    assert all(" " in n or n.isalpha() for n in r["class_names"])  # readable names from classes.txt


def test_every_grid_cell_has_a_preset_that_validates_offline(capsys):
    names = set(preset_names())
    for ds in ("cifar100", "imagenet-r", "imagenet-a", "cub200"):
        for t in (5, 10, 20, 50):
            name = f"{ds}-{t}t"
            assert name in names
            cfg = load_config(name, ["seed=0"])  # resolves and validates without data or network
            classes = 100 if ds == "cifar100" else 200
            assert cfg.scenario.init_cls == cfg.scenario.increment == classes // t
            assert cfg.model.backbone == "vit_base_patch16_224.augreg_in21k"
            assert cfg.train.loss == ("logitnorm" if ds == "imagenet-a" else "ce")
    assert run_cli("presets") == 0
    listed = capsys.readouterr().out
    assert "imagenet-r-50t" in listed and "cub200-5t" in listed


@pytest.mark.parametrize("preset,what", [("cifar100-10t", "cifar-100-python"), ("imagenet-r-10t", "imagenet-r")])
def test_missing_data_fails_at_once(tmp_path, capsys, preset, what):
    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.perf_counter()
    code = run_cli("run", "--preset", preset, "--out", tmp_path / "out", f"data.root={empty}", "data.download=false")
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and elapsed < 10
    assert what in err


def test_hub_weights_offline_fail_fast(tmp_path, capsys):
    make_presplit(tmp_path / "ia", ["ant", "bee"])
    t0 = time.perf_counter()
    code = run_cli(
        "run", "--preset", "imagenet-a-10t", "--out", tmp_path / "out", f"data.root={tmp_path / 'ia'}",
        "scenario.init_cls=1", "scenario.increment=1",
    )
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 5.0, (code, elapsed)
    assert "HF_HUB_OFFLINE" in err and "model.pretrained=" in err and "Traceback" not in err


def test_local_weights_file_is_loaded(tmp_path):
    """model.pretrained=PATH: a micro model's saved weights are the weights the run's backbone uses."""
    kwargs = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 32}
    torch.manual_seed(123)
    src = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, **kwargs)
    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    from sr2lora.models.backbone import create_vit

    vit = create_vit("vit_small_patch16_224", str(path), img_size=32, timm_kwargs={k: v for k, v in kwargs.items()
                                                                                    if k != "img_size"})
    for k, v in src.state_dict().items():
        assert torch.equal(vit.state_dict()[k], v), k
    out = tmp_path / "run"
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", out, f"model.pretrained={path}",
                   "train.epochs=1", "ca.epochs=2") == 0
    assert read_results(out)["num_tasks"] == 5
