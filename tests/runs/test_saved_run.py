"""Reading a run folder (sr2lora.runs.folder): nothing written, no dataset built, the same model as training's."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import read_results
from sr2lora import load_run
from sr2lora.analysis.restore import evaluate_run, restore_run
from sr2lora.config import load_config
from sr2lora.core.errors import CheckpointError, Sr2loraError
from sr2lora.data import registry
from sr2lora.data.base import DataError
from sr2lora.data.run_data import prepare_data
from sr2lora.models.build import rebuild_model
from sr2lora.models.state import is_stored_weight, restore_weights, stored_weights
from sr2lora.runs.saved import load_classifier, load_method, load_model, read_run
from sr2lora.train.engine import Trainer
from sr2lora.train.evaluation import lora_tasks


@pytest.fixture
def base(smoke_run) -> Path:
    """The shared finished smoke run (read-only: tests copy it before changing it)."""
    return smoke_run()[0]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime in ns)} of the folder itself and everything below it."""
    out = {".": (0, os.stat(folder).st_mtime_ns)}
    for p in sorted(folder.rglob("*")):
        st = os.stat(p)
        out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def eval_images(cfg) -> tuple[list, np.ndarray]:
    data = prepare_data(cfg, single_task=False)
    return [data.eval_images.load(i) for i in range(len(data.eval_labels))], data.eval_labels


def test_loading_a_run_writes_nothing(base):
    before = listing(base)
    parent = sorted(os.listdir(base.parent))
    run = load_run(base)
    load_run(base, task=1)
    folder = read_run(base)
    model = load_model(folder)
    load_classifier(folder, model.embed_dim)
    load_method(folder)
    restored, learned = restore_run(base, "cpu")  # analyses: builds the dataset, still writes nothing
    evaluate_run(str(base))
    assert learned == run.num_tasks == 5 and restored.model.num_tasks == 5
    assert listing(base) == before  # no probe file, no lock, no repaired checkpoint, no touched mtime
    assert sorted(os.listdir(base.parent)) == parent


def test_loading_does_not_build_the_dataset(base, tmp_path, monkeypatch):
    # a copy whose config names a dataset folder that does not exist: a trainer cannot even start on it
    copy = tmp_path / "moved"
    shutil.copytree(base, copy)
    cfg_file = copy / "config.yaml"
    doc = yaml.safe_load(cfg_file.read_text())
    doc["data"].update(dataset="folder", root=str(tmp_path / "no-such-dataset"))
    cfg_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(Sr2loraError, match="data.root"):
        Trainer(load_config(str(cfg_file)), tmp_path / "trainer-out", progress=False)

    # and a tripwire on the smoke preset's own builder: building the dataset now fails
    def no_dataset(cfg):
        raise DataError("the dataset was built")

    monkeypatch.setitem(registry.DATASETS._items, "smoke", no_dataset)
    with pytest.raises(DataError, match="was built"):
        prepare_data(load_config(str(base / "config.yaml")), single_task=False)

    moved, original = load_run(copy), load_run(base)
    assert moved.config.data.dataset == "folder" and moved.class_names == original.class_names
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(moved.model(x), original.model(x))
    folder = read_run(copy)
    assert load_model(folder, task=2).num_tasks == 3


def test_same_model_and_logits_as_the_trainer(base, tmp_path):
    """The run loaded through run_dir is the trainer's restored model (resume) bit for bit, and its logits give
    the accuracies results.json reports after every task."""
    results = read_results(base)
    copy = tmp_path / "resume"
    shutil.copytree(base, copy)  # a Trainer writes its preflight probe into the folder
    cfg = load_config(str(copy / "config.yaml"))
    trainer = Trainer(cfg, copy, progress=False)
    assert trainer.restore() == 5
    run = load_run(base)
    ours, theirs = run.model.cil.state_dict(), trainer.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    images, labels = eval_images(run.config)
    x = torch.stack([run.transform(im) for im in images])
    assert torch.equal(x, torch.stack([trainer.test_tf(im) for im in images]))
    T = run.num_tasks
    with torch.no_grad():
        logits = run.model(x)
        feature = trainer.model(x, tasks=lora_tasks(trainer.method.uses_lora, T - 1), logits=False).feature
        expected = trainer.classifier.logits(feature, trainer.model.heads, T - 1)
    assert torch.equal(logits, expected)
    assert 100.0 * float(np.mean(logits.argmax(-1).numpy() == labels)) == pytest.approx(results["final_acc"],
                                                                                        abs=1e-9)
    # the evaluation the analyses run (sr2lora.train.evaluation through a restored run) is the trainer's own
    e = evaluate_run(str(base))
    assert e["row"] == results["accuracy_matrix"][-1] and e["world_size"] == 1
    pred, y = trainer.predict_eval(T - 1)
    assert e["predictions"] == pred.tolist()


def test_stored_weights_are_lora_factors_and_heads(base):
    folder = read_run(base)
    model = load_model(folder)
    stored = stored_weights(model)
    assert stored.keys() == folder.groups["model"].keys()
    assert all(k.startswith("heads.") or ".qkv.A." in k or ".qkv.B." in k for k in stored)
    backbone = [k for k in model.state_dict() if not is_stored_weight(k)]
    assert backbone and all(k.startswith("vit.") for k in backbone)


def test_a_checkpoint_that_does_not_match_is_refused(base):
    folder = read_run(base)
    weights = dict(folder.groups["model"])
    del weights[next(k for k in weights if ".A." in k)]  # one LoRA factor missing
    sizes = np.diff(folder.offsets).tolist()
    fresh = rebuild_model(folder.config, uses_lora=True)
    with pytest.raises(CheckpointError, match="does not match the model"):
        restore_weights(fresh, weights, sizes, "cpu", base)
    fresh = rebuild_model(folder.config, uses_lora=True)
    with pytest.raises(CheckpointError, match="does not match the model"):
        restore_weights(fresh, {**folder.groups["model"], "heads.9.weight": torch.zeros(1)}, sizes, "cpu",
                        base)


def test_unfinished_and_missing_runs(base, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(base / "config.yaml", empty / "config.yaml")
    with pytest.raises(CheckpointError, match="not finished"):
        read_run(empty)
    assert read_run(empty, finished=False).state == {}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_run(empty)
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        restore_run(tmp_path)
    with pytest.raises(CheckpointError, match="no such run folder"):
        read_run(tmp_path / "missing")
    assert sorted(p.name for p in empty.iterdir()) == ["config.yaml"]
