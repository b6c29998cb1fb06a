"""Drift analysis (`sr2lora analyze`, analysis.enabled) and the layer-selection ablation (method.layers)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, PRECISIONS, run_cli
from sr2lora.analysis.drift import MEASURES, analyze_run, held_out_sample
from sr2lora.config import ConfigError, load_config
from sr2lora.data import build_dataset
from sr2lora.methods import create_method, select_layers
from sr2lora.methods.base import TaskContext
from sr2lora.models.backbone import ForwardOut


@pytest.fixture
def drift_runs(smoke_run):
    """``drift_runs(precision)``: the shared smoke run with the in-training analysis on (20 items per task),
    trained in that precision; returns (folder, its drift.json)."""

    def get(precision: str) -> tuple[Path, dict]:
        out, _ = smoke_run("analysis.enabled=true", "analysis.samples_per_task=20", precision=precision)
        return out, json.loads((out / "drift.json").read_text())

    return get


@pytest.fixture
def run_dir(drift_runs) -> tuple[Path, dict]:
    return drift_runs("fp32")


def _test_labels(run: Path) -> np.ndarray:
    """Run labels of the smoke test images (class order from results.json)."""
    cfg = load_config(str(run / "config.yaml"))
    targets = build_dataset(cfg.data).test.targets
    order = json.loads((run / "results.json").read_text())["class_order"]
    lut = np.empty(len(order), dtype=np.int64)
    lut[np.asarray(order)] = np.arange(len(order))
    return lut[targets]


def _check_doc(doc: dict, labels: np.ndarray, n: int) -> None:
    T = doc["num_tasks"]
    offsets = doc["task_offsets"]
    assert doc["schema"] == "sr2lora.drift/1" and doc["tasks_analyzed"] == T and doc["num_layers"] == 4
    assert [t["task"] for t in doc["tasks"]] == list(range(T))
    for task in doc["tasks"]:
        j = task["task"]
        idx = np.array(task["sample"]["indices"])
        lo, hi = offsets[j], offsets[j + 1]
        # the stated held-out sample: n distinct items among task j's test items, labels as stored
        assert len(idx) == n == len(set(idx.tolist())) and task["labels"] == [lo, hi]
        assert np.all((labels[idx] >= lo) & (labels[idx] < hi))
        assert task["sample"]["labels"] == labels[idx].tolist()
        assert [r["t"] for r in task["after"]] == list(range(j, T))
        for r in task["after"]:
            assert set(MEASURES) <= set(r)
            assert all(np.isfinite(r[m]) for m in MEASURES)
        first = task["after"][0]  # t == j: the model is the one the references come from
        assert first["relation_drift"] <= 1e-6 and first["spectrum_drift"] <= 1e-6
        assert first["prototype_shift"] <= 1e-6
    assert any(r["relation_drift"] > 1e-3 for task in doc["tasks"] for r in task["after"][1:])
    assert doc["summary"][0]["relation_drift"] is None and doc["summary"][-1]["relation_drift"] > 0


def test_analyze_writes_drift(run_dir, tmp_path, capsys):
    run = tmp_path / "run"  # analyze writes into the run folder: a copy of the shared run
    shutil.copytree(run_dir[0], run)
    labels = _test_labels(run)
    plots = tmp_path / "plots"
    assert run_cli("analyze", run, "--samples", "10", "--seed", "3", "--out", plots, "--device", "cpu") == 0
    first = json.loads((run / "drift.json").read_text())
    assert first["source"] == "checkpoint" and first["heads"] == "per-task snapshots"
    _check_doc(first, labels, 10)
    assert (plots / "drift.png").is_file() and (plots / "drift_per_task.png").is_file()
    # same arguments: reused; --recompute: the same sample and the same numbers
    assert run_cli("analyze", run, "--samples", "10", "--seed", "3", "--out", plots) == 0
    assert "reused" in capsys.readouterr().out
    assert run_cli("analyze", run, "--samples", "10", "--seed", "3", "--out", plots, "--recompute") == 0
    again = json.loads((run / "drift.json").read_text())
    for a, b in zip(first["tasks"], again["tasks"]):
        assert a["sample"] == b["sample"]
        for ra, rb in zip(a["after"], b["after"]):
            for m in MEASURES:
                assert ra[m] == pytest.approx(rb[m], abs=1e-6)
    # the sample is the seeded one held_out_sample states
    cfg = load_config(str(run / "config.yaml"))
    idx = held_out_sample(labels, np.arange(len(labels)), 4, 8, 10, 3, 1)
    assert first["tasks"][1]["sample"]["indices"] == idx.tolist()
    assert held_out_sample(labels, np.arange(len(labels)), 4, 8, 10, 4, 1).tolist() != idx.tolist()
    assert cfg.analysis.enabled


@pytest.mark.parametrize("precision", PRECISIONS)
def test_training_drift_equals_offline(drift_runs, precision):
    """Trained in either precision, the drift measured during training (float32, as every evaluation) is the one
    measured offline from the checkpoint."""
    run, during = drift_runs(precision)
    assert during["source"] == "training" and during["samples_per_task"] == 20
    _check_doc(during, _test_labels(run), 20)
    offline = analyze_run(run, samples_per_task=20, seed=0, device="cpu")
    for a, b in zip(during["tasks"], offline["tasks"]):
        assert a["sample"] == b["sample"]
        for ra, rb in zip(a["after"], b["after"]):
            assert ra["t"] == rb["t"]
            for m in MEASURES:  # folded (training) vs unfolded (offline) weights: float rounding only
                assert ra[m] == pytest.approx(rb[m], rel=1e-3, abs=1e-4), (a["task"], ra["t"], m)


def test_analysis_config_validated():
    assert load_config("smoke").analysis.enabled is False
    with pytest.raises(ConfigError, match="analysis.samples_per_task"):
        load_config("smoke", ["analysis.samples_per_task=0"])


# ---------------------------------------------------------------- method.layers ablation


def _features(batch: int, layers: int, dim: int, seed: int) -> ForwardOut:
    g = torch.Generator().manual_seed(seed)
    return ForwardOut(torch.randn(batch, dim, generator=g), torch.randn(batch, layers, dim, generator=g), None)


@pytest.mark.parametrize("method", ["sr2lora", "entrywise", "spectral-batch", "feat-all"])
def test_layers_option_selects_blocks_of_a_12_layer_vit(method):
    ctx = TaskContext(task=1, model=None)
    new, old = _features(3, 12, 16, 0), _features(3, 12, 16, 1)
    cases = {"all": list(range(12)), "first:4": [0, 1, 2, 3], "last:4": [8, 9, 10, 11], "[0, 5, 11]": [0, 5, 11],
             "random:4": select_layers("random:4", 12, 5)}
    for spec, expected in cases.items():
        value = [0, 5, 11] if spec.startswith("[") else spec
        m = create_method(method, {"layers": value, "layers_seed": 5}, 1.0)
        loss = m.regularizer(new, old, ctx)
        assert torch.isfinite(loss)
        assert m.layer_index == expected
        assert tuple(m.last_shapes[0]) == tuple(m.last_shapes[1]) == (3, len(expected), 16)
    picks = {tuple(select_layers("random:4", 12, s)) for s in range(6)}
    assert len(picks) > 1 and all(len(set(p)) == 4 for p in picks)
    assert select_layers("random:4", 12, 5) == select_layers("random:4", 12, 5)
    with pytest.raises(ConfigError):
        select_layers("first:13", 12)


@pytest.mark.parametrize("spec", ["first:2", "random:2"])
def test_layers_option_in_training(spec):
    from sr2lora.train.engine import Trainer

    cfg = load_config("smoke", [f"method.layers={spec}", "train.device=cpu", *FAST])
    trainer = Trainer(cfg, None, progress=False)
    for t in range(2):
        trainer.model.add_task(trainer.scenario.task_size(t))
        trainer.train_task(t)
    m = trainer.method
    expected = [0, 1] if spec == "first:2" else select_layers("random:2", 4, 0)
    assert m.layer_index == expected
    b = m.last_shapes[0][0]
    assert tuple(m.last_shapes[0]) == tuple(m.last_shapes[1]) == (b, 2, trainer.model.embed_dim)
