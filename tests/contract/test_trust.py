"""Runs you can trust, through the CLI: a diverged stage stops the run, NaN never reaches JSON, one process per
run folder, a resume that checks what it resumes, and inputs that used to hang end within seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import FAST, fill, folder_args, image_folder, read_results, run_cli, small_tmpfs, stopped_run
from sr2lora.runs.folder import RunFolder

CKPT_DIR = RunFolder.CHECKPOINT
LOCK_NAME = RunFolder.LOCK

RUN = ("run", "--preset", "smoke", "--quiet")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def fails(capsys, *args, code: int = 2) -> str:
    """Run the CLI, expect exit ``code`` and an `error:` line without a traceback; return stderr."""
    rc = run_cli(*args)
    captured = capsys.readouterr()
    assert rc == code, captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert "error: " in captured.err, captured.err
    return captured.err


def strict_json(path: Path):
    """Parse ``path`` refusing NaN/Infinity (which json.loads accepts by default but JSON does not have)."""
    def refuse(token: str):
        raise AssertionError(f"{path}: holds {token}, not valid JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def cli_process(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m sr2lora ARGS` as a separate process (stdout/stderr captured)."""
    full_env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "sr2lora", *map(str, args)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------------- silent wrong results
def test_diverged_alignment_stops_the_run(tmp_path, capsys):
    """ca.lr=1e30: the heads blow up (finite but huge: chance accuracy); the run must not exit 0."""
    out = tmp_path / "run"
    err = fails(capsys, *RUN, "--out", out, *FAST, "ca.lr=1.0e+30")
    assert "task 2: classifier alignment diverged" in err and "lower ca.lr (now 1e+30)" in err
    assert not (out / "results.json").exists()
    assert json.loads((out / CKPT_DIR / "state.json").read_text())["task"] == 0, "task 1's checkpoint is kept"


def test_task_without_evaluation_images_writes_null_not_nan(tmp_path, capsys):
    """A class with one image alone in a task has no test image: its accuracy is undefined -> null, said why."""
    root = image_folder(tmp_path / "images", {"a": 6, "b": 6, "c": 6, "d": 1})
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="has 1 training sample"):
        rc = run_cli(*RUN, "--out", out, "data.dataset=folder", f"data.root={root}", "scenario.order=natural",
                     "scenario.init_cls=3", "scenario.increment=1", *FAST)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "task(s) 2 have no evaluation image" in captured.err
    r = strict_json(out / "results.json")
    assert r["empty_eval_tasks"] == [1] and r["task_test_counts"][1] == 0
    assert r["accuracy_matrix"][1][1] is None and r["accuracy_matrix"][1][0] is not None
    strict_json(out / CKPT_DIR / "state.json")


# ------------------------------------------------------------------------------------- report
@pytest.fixture
def finished_run(smoke_run) -> Path:
    """The shared finished smoke run (read-only: tests copy it before changing it)."""
    return smoke_run()[0]


def test_report_writes_valid_json_when_a_result_is_nan(tmp_path, finished_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    r = json.loads((run / "results.json").read_text())
    r["forgetting"] = float("nan")
    (run / "results.json").write_text(json.dumps(r))  # json.dumps writes NaN
    assert run_cli("report", run, "--out", tmp_path / "rep") == 0
    doc = strict_json(tmp_path / "rep" / "report.json")
    assert doc["groups"][0]["metrics"]["forgetting"]["mean"] is None
    assert "nan" not in capsys.readouterr().out.lower()


@pytest.mark.parametrize("content, message", [
    ('{"method": "sr2lora", "acc_cu', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object (a sr2lora run's results), got a list"),
    ('{"method": "sr2lora"}', "not the results of a sr2lora run (lacks acc_curve"),
])
def test_report_names_a_bad_results_file(tmp_path, finished_run, capsys, content, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").write_text(content)
    err = fails(capsys, "report", run, "--out", tmp_path / "rep")
    assert f"{run / 'results.json'}: {message}" in err


def test_report_over_runs_differing_in_many_keys_shortens_figure_names(tmp_path, finished_run, capsys):
    runs = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        shutil.copytree(finished_run, run)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["model"]["timm_kwargs"]["label"] = f"{i}-" + "x" * 300  # one long differing value
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(run)
    assert run_cli("report", *runs, "--out", tmp_path / "rep") == 0, capsys.readouterr().err
    figures = strict_json(tmp_path / "rep" / "report.json")["figures"]
    matrices = [f for f in figures if f.startswith("matrix_")]
    assert len(matrices) == 2 and len(set(matrices)) == 2
    assert all(len(f) < 255 and (tmp_path / "rep" / f).is_file() for f in figures)


# ------------------------------------------------------------------------------------- run-folder lock
def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first run ended early: {proc.communicate()}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


def test_second_run_into_a_folder_in_use_fails_and_a_killed_owners_lock_is_stale(tmp_path, capsys):
    out = tmp_path / "run"
    # The first run pauses inside its first checkpoint write, so it is alive and owns the folder.
    first = cli_process(*RUN, "--out", out, *FAST, env={"SR2LORA_TEST_PAUSE_IN_CHECKPOINT": "60"})
    try:
        wait_for(out / "config.yaml", first)
        owner = json.loads((out / LOCK_NAME).read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        config_before = (out / "config.yaml").read_bytes()
        for args in ((*RUN, "--out", out, *FAST), ("run", "--resume", out, "--quiet")):
            err = fails(capsys, *args)
            assert f"in use by another sr2lora process (pid {first.pid}" in err
        assert (out / "config.yaml").read_bytes() == config_before
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert (out / LOCK_NAME).exists(), "SIGKILL leaves the lock behind"
    assert run_cli("run", "--resume", out, "--quiet") == 0
    captured = capsys.readouterr()
    assert f"removing the stale lock of pid {first.pid}" in captured.err
    assert read_results(out)["num_tasks"] == 5
    assert not (out / LOCK_NAME).exists(), "the lock is released at the end"


def test_two_fresh_runs_started_at_once_one_wins(tmp_path, capsys):
    """Both pass the 'folder already holds a run' check; the lock lets only one of them write."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}))
    err = fails(capsys, *RUN, "--out", out, *FAST)
    assert f"pid {os.getppid()}" in err and "choose another --out" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "nothing was written"


# ------------------------------------------------------------------------------------- resume checks
FOUR = {"a": 6, "b": 6, "c": 6, "d": 6}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, finished 2-task run on it)."""
    base = tmp_path_factory.mktemp("folder_run")
    root = image_folder(base / "images", FOUR)
    out = base / "run"
    assert run_cli(*RUN, "--out", out, *folder_args(root)) == 0
    return root, out


def unfinished(run: Path, dst: Path) -> Path:
    """A run folder as a crash would leave it: config and checkpoint, no results.json."""
    shutil.copytree(run, dst)
    (dst / "results.json").unlink()
    return dst


def test_resume_on_a_changed_dataset_is_refused(tmp_path, folder_run, capsys):
    root, run = folder_run
    other = tmp_path / "images"
    shutil.copytree(root, other)
    shutil.copy(other / "a" / "img00.png", other / "a" / "img99.png")  # one more training image
    resumed = unfinished(run, tmp_path / "run")
    err = fails(capsys, "run", "--resume", resumed, "--quiet", f"data.root={other}")
    assert "the checkpoint was written on another dataset than data.root now gives" in err
    assert f"root {root.resolve()} -> {other.resolve()}" in err and "train files 16 -> 17" in err
    assert not (resumed / "results.json").exists()


def test_resume_on_a_moved_identical_copy_is_accepted(tmp_path, folder_run, capsys):
    root, run = folder_run
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    resumed = unfinished(run, tmp_path / "run")
    assert run_cli("run", "--resume", resumed, "--quiet", f"data.root={moved}") == 0
    assert f"the dataset moved from {root.resolve()} to {moved.resolve()}" in capsys.readouterr().err
    assert read_results(resumed)["accuracy_matrix"] == read_results(run)["accuracy_matrix"]


@pytest.mark.parametrize("name", ["model.safetensors", "stats.safetensors", "method.safetensors",
                                  "heads.safetensors", "manifest.json", "state.json"])
def test_resume_refuses_a_checkpoint_missing_a_file(tmp_path, folder_run, capsys, name):
    _, run = folder_run
    resumed = unfinished(run, tmp_path / "run")
    (resumed / CKPT_DIR / name).unlink()
    before = sorted(p.name for p in (resumed / CKPT_DIR).iterdir())
    err = fails(capsys, "run", "--resume", resumed, "--quiet")
    expected = {"manifest.json": "no manifest.json", "state.json": "incomplete checkpoint (no state.json)"}
    assert expected.get(name, f"{resumed / CKPT_DIR / name}: missing from the checkpoint") in err
    assert sorted(p.name for p in (resumed / CKPT_DIR).iterdir()) == before, "nothing was changed"


@pytest.mark.parametrize("task", [10, "x"])
def test_resume_refuses_an_edited_state(tmp_path, folder_run, capsys, task):
    _, run = folder_run
    resumed = unfinished(run, tmp_path / "run")
    state_file = resumed / CKPT_DIR / "state.json"
    state = json.loads(state_file.read_text())
    state["task"] = task
    state_file.write_text(json.dumps(state))
    err = fails(capsys, "run", "--resume", resumed, "--quiet")
    assert f"{state_file}: changed since the checkpoint was written" in err


# ------------------------------------------------------------------------------------- the file walker
def test_symlink_to_a_parent_folder_is_not_followed(tmp_path, capsys):
    root = image_folder(tmp_path / "images", FOUR)
    (root / "a" / "loop").symlink_to("..")  # would make class a swallow every other class's images
    (root / "b" / "sibling").symlink_to(root / "c")  # would read class c's images again as class b
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="ignored 1 symlinked folder"):
        assert run_cli(*RUN, "--out", out, *folder_args(root)) == 0
    info = read_results(out)["dataset_info"]
    assert info["train"] + info["test"] == 24, "each image once, under its own class"


def test_fifo_named_like_an_image_does_not_hang(tmp_path):
    root = image_folder(tmp_path / "images", FOUR)
    fifo = root / "a" / "x.png"
    os.mkfifo(fifo)
    out = tmp_path / "run"
    proc = cli_process(*RUN, "--out", out, *folder_args(root))
    try:
        _, err = proc.communicate(timeout=30)  # opening the FIFO would block forever
    finally:
        proc.kill()
    assert proc.returncode == 2 and "Traceback" not in err
    assert f"{fifo} (a FIFO (named pipe), not an image file)" in err
    assert not out.exists(), "nothing was left behind"


def test_out_inside_the_data_folder_is_refused_before_anything_is_created(tmp_path, capsys):
    root = image_folder(tmp_path / "images", FOUR)
    for out in (root / "myrun", root / "a" / "run"):
        err = fails(capsys, *RUN, "--out", out, *folder_args(root))
        assert f"--out {out}: inside the dataset folder {root}" in err
        assert not out.exists()


def test_16_bit_and_float_images_are_scaled_to_8_bit(tmp_path):
    from sr2lora.data.base import DataError, FileImages

    grey = np.full((8, 8), 0.5)
    files = {
        "png16.png": Image.fromarray((grey * 65535).astype(np.uint16)),  # 16-bit grey PNG
        "int32.tif": Image.fromarray((grey * 65535).astype(np.int32)),  # 32-bit integer TIFF, values 0..65535
        "float.tif": Image.fromarray(grey.astype(np.float32)),  # float TIFF in [0, 1]
        "float255.tif": Image.fromarray((grey * 255).astype(np.float32)),  # float TIFF in [0, 255]
    }
    for name, im in files.items():
        im.save(tmp_path / name)
    images = FileImages([tmp_path / n for n in files], [0] * len(files))
    for i, name in enumerate(files):
        pixels = np.asarray(images.load(i))
        assert pixels.shape == (8, 8, 3) and np.abs(pixels.astype(int) - 128).max() <= 1, (name, pixels[0, 0])
    Image.fromarray(np.full((8, 8), 7.5e3, dtype=np.float32)).save(tmp_path / "odd.tif")
    with pytest.raises(DataError, match=r"odd.tif: a float image with values in \[7500, 7500\]"):
        FileImages([tmp_path / "odd.tif"], [0]).load(0)


def test_float_image_of_unknown_range_is_named_before_training(tmp_path, capsys):
    root = image_folder(tmp_path / "images", FOUR)
    Image.fromarray(np.full((32, 32), -3.0, dtype=np.float32)).save(root / "a" / "odd.tif")
    err = fails(capsys, *RUN, "--out", tmp_path / "run", *folder_args(root))
    assert f"{root / 'a' / 'odd.tif'} (a float image with values in [-3, -3]" in err


# ------------------------------------------------------------------------------------- distributed env
def test_stray_distributed_environment_is_ignored(tmp_path):
    out = tmp_path / "run"
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555", "WORLD_SIZE": "2", "RANK": "0"}
    for k in ("TORCHELASTIC_RUN_ID", "SR2LORA_DISTRIBUTED"):
        os.environ.pop(k, None)
    proc = cli_process(*RUN, "--out", out, *FAST, env=env)
    try:
        _, err = proc.communicate(timeout=120)  # used to wait forever for a second process
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "note: ignoring WORLD_SIZE=2, RANK=0, MASTER_ADDR=127.0.0.1" in err and "not started by torchrun" in err
    assert read_results(out)["num_tasks"] == 5


# ------------------------------------------------------------------------------------- export, predict
def test_export_does_not_overwrite_without_force(tmp_path, finished_run, capsys):
    out = tmp_path / "x.safetensors"
    sidecar = out.with_suffix(".json")
    sidecar.write_text("my notes")
    err = fails(capsys, "export", "--run", finished_run, "--out", out)
    assert f"{sidecar} already exist(s); nothing was written" in err and "--force" in err
    assert sidecar.read_text() == "my notes" and not out.exists()
    assert run_cli("export", "--run", finished_run, "--out", out, "--force") == 0
    assert json.loads(sidecar.read_text())["weights"] == "x.safetensors"


def test_predict_fails_when_no_file_could_be_classified(tmp_path, finished_run, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert run_cli("predict", "--run", finished_run, bad, "--quiet") == 2
    err = capsys.readouterr().err
    assert "error: none of the 1 file(s) could be read as an image" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- validation before any work


def test_cuda_without_a_gpu_fails_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    err = fails(capsys, *RUN, "--out", out, *FAST, "train.device=cuda")
    assert "train.device=cuda: this machine has no CUDA device" in err and not out.exists()


def test_dotted_override_merges_into_timm_kwargs(capsys):
    assert run_cli("config", "--preset", "smoke", "model.timm_kwargs.depth=2") == 0
    kwargs = yaml.safe_load(capsys.readouterr().out)["model"]["timm_kwargs"]
    assert kwargs == {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
              for p, c in zip("abcdefgh", "bcdefghi")]  # 10^9 values expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("base: smoke\nmodel:\n  timm_kwargs:\n" + "".join(f"    {line}\n" for line in lines))
    proc = cli_process("config", "--preset", bomb)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "Traceback" not in err and len(out) < 1000
    assert f"{bomb}: the YAML expands to more than 100000 values" in err


def test_preset_with_resume_is_refused(finished_run, capsys):
    err = fails(capsys, "run", "--preset", "smoke", "--resume", finished_run)
    assert "--preset smoke with --resume" in err and "drop --preset" in err


def test_base_is_resolved_relative_to_the_preset_file(tmp_path, monkeypatch, capsys):
    sub = tmp_path / "presets"
    sub.mkdir()
    (sub / "mine.yaml").write_text("base: smoke\nseed: 7\n")
    (sub / "child.yaml").write_text("base: mine.yaml\ntrain:\n  epochs: 2\n")
    (sub / "orphan.yaml").write_text("base: nothere.yaml\n")
    monkeypatch.chdir(tmp_path)  # not the presets folder
    assert run_cli("config", "--preset", sub / "child.yaml") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["seed"] == 7 and cfg["train"]["epochs"] == 2 and cfg["data"]["dataset"] == "smoke"
    err = fails(capsys, "config", "--preset", sub / "orphan.yaml")
    assert f"{sub / 'orphan.yaml'}: base: nothere.yaml not found (looked for {sub / 'nothere.yaml'}" in err


def test_sweep_crossing_methods_with_an_option_names_the_method(tmp_path, capsys):
    err = fails(capsys, "sweep", "--preset", "smoke", "--out", tmp_path / "sw", "--dry-run",
                "method.name=sr2lora,frozen", "method.beta=2")
    assert "method.name=frozen: unknown config key 'method.beta'" in err and "(valid: none)" in err


def test_image_over_pillows_size_limit_is_named_as_such(tmp_path, capsys, monkeypatch):
    from PIL import Image as PILImage

    root = image_folder(tmp_path / "images", FOUR)
    big = root / "a" / "big.png"
    PILImage.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(big)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1500)  # 32x32 images pass, 64x64 is over twice the limit
    err = fails(capsys, *RUN, "--out", tmp_path / "run", *folder_args(root))
    assert f"{big} (larger than Pillow's safety limit of 1500 pixels" in err
    assert "3000" not in err, "one limit is quoted, not Pillow's own error beside it"


def test_demo_refuses_a_folder_in_use(tmp_path, capsys):
    out = tmp_path / "folder"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}))
    err = fails(capsys, "demo", "--preset", "smoke", "--methods", "frozen", "--out", out)
    assert f"in use by another sr2lora process (pid {os.getppid()}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_sweep_leaves_a_cell_in_use_to_its_owner(tmp_path, capsys):
    """Two sweeps may drive one folder: a cell whose run folder another live process holds is running
    elsewhere, left to it (nothing written into it), and not a failure."""
    out = tmp_path / "sweep"
    cell = out / "base" / "seed1993"
    cell.mkdir(parents=True)
    (cell / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "x"}))
    assert run_cli("sweep", "--preset", "smoke", "--out", out, "--quiet", *FAST) == 0
    printed = capsys.readouterr().out
    assert "running elsewhere" in printed and "base/seed1993" in printed
    assert sorted(p.name for p in cell.iterdir()) == [LOCK_NAME]
    assert run_cli("sweep", "--status", out) == 0
    assert "running" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- faults a user meets
ACC_KEYS = ["accuracy_matrix", "acc_curve", "final_acc", "avg_acc", "forgetting", "bwt", "plasticity",
            "class_order", "task_test_counts"]


@pytest.fixture(scope="module")
def stopped_smoke(tmp_path_factory) -> Path:
    """The shared smoke run (FAST, fp32) stopped after task 2 of 5; read-only (copy it to resume it)."""
    return stopped_run(tmp_path_factory.mktemp("stopped") / "run")


def same_numbers(run: Path, reference: Path) -> None:
    """Accuracies, metrics.csv and the final weights and class statistics equal to the reference's, bit for bit."""
    r, ref = read_results(run), read_results(reference)
    for key in ACC_KEYS:
        assert r[key] == ref[key], key
    assert (run / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    for name in ("model.safetensors", "stats.safetensors"):
        assert (run / CKPT_DIR / name).read_bytes() == (reference / CKPT_DIR / name).read_bytes(), name


def test_worker_count_changes_no_number(tmp_path, smoke_run, capsys):
    """augmentations used to be drawn per worker process, so data.num_workers=2 trained on other images."""
    reference, _ = smoke_run()
    out = tmp_path / "run"
    assert run_cli(*RUN, "--out", out, *FAST, "train.precision=fp32", "data.num_workers=2") == 0
    same_numbers(out, reference)


def resume_values(tmp_path: Path) -> dict[str, str]:
    """A value for every key allowed to change on resume, as the resume gives it on the command line."""
    from sr2lora.core.hardware import DEFAULT_THREADS, resolve_device

    return {"data.num_workers": "2", "data.root": str(tmp_path),  # number-neutral: may take any value
            # may be spelled differently, but only to compute as the checkpoint's tasks did (see the next test)
            "train.device": resolve_device("auto").type, "train.threads": str(DEFAULT_THREADS),
            "train.eval_batch_size": "128"}


def test_every_runtime_key_has_a_resume_case(tmp_path):
    from sr2lora.config import RUNTIME_KEYS

    assert set(resume_values(tmp_path)) == set(RUNTIME_KEYS)


@pytest.mark.parametrize("key", sorted(["data.num_workers", "data.root", "train.device", "train.threads",
                                        "train.eval_batch_size"]))
def test_resume_with_a_runtime_key_gives_the_uninterrupted_numbers(tmp_path, smoke_run, stopped_smoke, key):
    """No key allowed to change on resume may change a number."""
    reference, _ = smoke_run()
    run = tmp_path / "run"
    shutil.copytree(stopped_smoke, run)
    assert run_cli("run", "--resume", run, "--quiet", f"{key}={resume_values(tmp_path)[key]}") == 0
    same_numbers(run, reference)


def test_resume_that_would_compute_otherwise_is_refused_unless_asked(tmp_path, stopped_smoke, capsys):
    """train.threads and train.eval_batch_size change the last bits (measured); a resume keeps them or says so."""
    from sr2lora.core.hardware import DEFAULT_THREADS

    run = tmp_path / "run"
    shutil.copytree(stopped_smoke, run)
    state = (run / CKPT_DIR / "state.json").read_bytes()
    other = 1 if DEFAULT_THREADS != 1 else 2
    args = ("run", "--resume", run, "--quiet", f"train.threads={other}", "train.eval_batch_size=7")
    err = fails(capsys, *args)
    assert f"(threads {DEFAULT_THREADS} -> {other}; eval_batch_size 128 -> 7)" in err
    assert f"Resume with train.threads={DEFAULT_THREADS} train.eval_batch_size=128 to keep the numbers" in err
    assert "--allow-other-compute" in err
    assert (run / CKPT_DIR / "state.json").read_bytes() == state and not (run / "results.json").exists()
    with pytest.warns(UserWarning, match="resuming with threads"):
        assert run_cli(*args, "--allow-other-compute") == 0
    compute = read_results(run)["task_compute"]
    assert [c["threads"] for c in compute] == [DEFAULT_THREADS] * 2 + [other] * 3
    assert [c["eval_batch_size"] for c in compute] == [128] * 2 + [7] * 3


def test_out_holding_someone_elses_files_is_refused(tmp_path, capsys):
    """a checkpoint/ folder and metrics.csv of the user's used to be deleted and overwritten (exit 0)."""
    out = tmp_path / "mine"
    (out / CKPT_DIR).mkdir(parents=True)
    (out / CKPT_DIR / "notes.txt").write_text("my notes")
    (out / "metrics.csv").write_text("my numbers")
    for extra in ((), ("--continue",)):
        err = fails(capsys, *RUN, "--out", out, *FAST, *extra)
        assert f"{out}: holds files sr2lora did not write (checkpoint, metrics.csv) and no run (config.yaml)" in err
        assert "choose a new or empty folder" in err
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoint", "metrics.csv", "notes.txt"]
    assert (out / "metrics.csv").read_text() == "my numbers"


def jpeg_folder(root: Path) -> Path:
    """root/<class>/*.jpg: four classes of six 32 px JPEGs."""
    rng = np.random.default_rng(0)
    for k, name in enumerate("abcd"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(np.array([60 * k, 255 - 60 * k, 90 * k]) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"img{i:02d}.jpg", quality=90)
    return root


def truncate(path: Path) -> bytes:
    """Cut ``path`` to half its bytes (a download that stopped); returns the whole file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data


def test_truncated_jpeg_is_found_before_training_and_skipped_with_skip_bad(tmp_path, capsys):
    """PIL's verify() passes a truncated JPEG; the run used to fail at the task holding it."""
    root = jpeg_folder(tmp_path / "images")
    bad = root / "d" / "img03.jpg"
    truncate(bad)
    out = tmp_path / "run"
    err = fails(capsys, *RUN, "--out", out, *folder_args(root), "scenario.order=natural")
    assert f"{bad} (truncated: the file ends before the image does)" in err and "data.skip_bad=true" in err
    assert not out.exists(), "nothing was trained or written"
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file"):
        assert run_cli(*RUN, "--out", out, *folder_args(root), "scenario.order=natural", "data.skip_bad=true") == 0
    assert read_results(out)["skipped_files"] == [str(bad)]


def test_a_file_damaged_after_the_start_has_a_way_forward(tmp_path, capsys):
    """after a damaged file, resume was refused ("another dataset") and skip_bad could not be added."""
    root = jpeg_folder(tmp_path / "images")
    args = (*folder_args(root), "scenario.order=natural")
    stopped = stopped_run(tmp_path / "stopped", *args, after=0)  # task 1 (classes a, b) trained
    reference = tmp_path / "reference"
    assert run_cli(*RUN, "--out", reference, *args, "train.precision=fp32") == 0
    bad = root / "d" / "img03.jpg"
    whole = truncate(bad)  # a file of task 2, not trained yet
    runs = {name: shutil.copytree(stopped, tmp_path / name) for name in ("plain", "skip", "fixed", "trained")}
    err = fails(capsys, "run", "--resume", runs["plain"], "--quiet")
    assert str(bad) in err and "data.skip_bad=true added to `sr2lora run --resume`" in err
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert run_cli("run", "--resume", runs["skip"], "--quiet", "data.skip_bad=true") == 0
    assert "note: task(s) 2 have other files than when the run started" in capsys.readouterr().err
    assert read_results(runs["skip"])["skipped_files"] == [str(bad)]
    bad.write_bytes(whole)  # the file fixed: the run ends as an uninterrupted one
    assert run_cli("run", "--resume", runs["fixed"], "--quiet") == 0
    assert read_results(runs["fixed"])["accuracy_matrix"] == read_results(reference)["accuracy_matrix"]
    (root / "a" / "img05.jpg").unlink()  # a file of task 1, which the checkpoint trained on: refused
    err = fails(capsys, "run", "--resume", runs["trained"], "--quiet")
    assert "other files in task(s) 1, which it has trained already" in err and "test files 8 -> 7" in err
    assert not (runs["trained"] / "results.json").exists()


@pytest.mark.parametrize("free_kb, kept", [(40, "no checkpoint yet"), (400, "the previous checkpoint is intact")])
def test_full_disk_during_a_checkpoint_on_a_real_tmpfs(tmp_path, smoke_run, capsys, free_kb, kept):
    """safetensors' own SafetensorError (os error 28) used to end the run with a traceback."""
    reference, _ = smoke_run()
    with small_tmpfs(tmp_path / "disk") as disk:
        filler = fill(disk, free_kb * 1024)
        out = disk / "run"
        err = fails(capsys, *RUN, "--out", out, *FAST, "train.precision=fp32")
        assert f"cannot write the checkpoint into {out}: No space left on device" in err and kept in err
        assert f"continue with `sr2lora run --resume {out}`" in err
        assert not list(out.glob(f"{CKPT_DIR}.*")) and not (out / "results.json").exists()
        filler.unlink()  # room again: the run continues from its last checkpoint, with the uninterrupted numbers
        assert run_cli("run", "--resume", out, "--quiet") == 0
        same_numbers(out, reference)


def test_full_disk_during_export_keeps_the_old_files(tmp_path, finished_run, capsys):
    """export on a full disk used to end with a SafetensorError traceback."""
    with small_tmpfs(tmp_path / "disk", size="2m") as disk:
        out = disk / "model.safetensors"
        assert run_cli("export", "--run", finished_run, "--out", out) == 0
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        fill(disk, 64 * 1024)
        err = fails(capsys, "export", "--run", finished_run, "--out", out, "--force")
        assert "export: cannot write" in err and "No space left on device; the existing files are unchanged" in err
        assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"} == before


def test_a_sweeps_run_folder_is_locked_while_the_sweep_writes_it(tmp_path, capsys):
    """`run --resume` of a sweep's run folder used to run beside the sweep writing it (both exit 0)."""
    sweep = tmp_path / "sweep"
    cell = sweep / "base" / "seed1993"
    proc = cli_process("sweep", "--preset", "smoke", "--out", sweep, "--quiet", "--no-report", *FAST,
                       env={"SR2LORA_TEST_PAUSE_IN_CHECKPOINT": "60"})  # alive inside its first checkpoint write
    try:
        wait_for(cell / "config.yaml", proc)
        wait_for(cell / LOCK_NAME, proc)
        config = (cell / "config.yaml").read_bytes()
        err = fails(capsys, "run", "--resume", cell, "--quiet")
        assert f"{cell}: the run folder is in use by another sr2lora process (pid {proc.pid}" in err
        assert run_cli(*RUN, "--continue", "--out", cell, *FAST) == 75  # a sweep's cell: running elsewhere
        assert f"{cell}: running elsewhere (pid {proc.pid}, started " in capsys.readouterr().err  # one line
        assert (cell / "config.yaml").read_bytes() == config and not (cell / CKPT_DIR).exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()


def flip_a_bit(path: Path) -> None:
    """Flip one bit near the end of ``path`` (in a safetensors file: a tensor value)."""
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))


def test_predict_and_export_verify_the_checkpoint_manifest(tmp_path, finished_run, capsys):
    """one flipped bit in model.safetensors used to change a prediction, exit 0."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    flip_a_bit(run / CKPT_DIR / "model.safetensors")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    changed = f"{run / CKPT_DIR / 'model.safetensors'}: changed since the checkpoint was written"
    assert changed in fails(capsys, "predict", "--run", run, image, "--quiet")
    assert changed in fails(capsys, "export", "--run", run, "--out", tmp_path / "x.safetensors")
    assert not list(tmp_path.glob("x.*.safetensors")) and not (tmp_path / "x.safetensors").exists()


def drop_from_manifest(ckpt: Path, name: str | None) -> None:
    """Remove ``name`` and its manifest entry (``None``: empty the manifest's file list)."""
    manifest = ckpt / "manifest.json"
    doc = json.loads(manifest.read_text())
    if name is None:
        doc["files"] = {}
    else:
        (ckpt / name).unlink()
        del doc["files"][name]
    manifest.write_text(json.dumps(doc))


@pytest.mark.parametrize("name", ["method.safetensors", "stats.safetensors", "state.json", None])
def test_a_manifest_does_not_excuse_a_missing_file(tmp_path, finished_run, capsys, name):
    """a file deleted together with its manifest entry (method.safetensors: a silent other result;
    stats.safetensors: a KeyError traceback), or {"files": {}}, used to turn the checks off."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    drop_from_manifest(run / CKPT_DIR, name)
    missing = name or "model.safetensors"
    expected = f"{run / CKPT_DIR / 'manifest.json'}: " + (f"{run / CKPT_DIR / missing} and its entry are missing"
                                                          if name else "the entry of model.safetensors is missing")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    if name != "state.json":  # (without state.json a folder is no checkpoint at all: named as such)
        assert expected in fails(capsys, "predict", "--run", run, image, "--quiet")
    (run / "results.json").unlink()
    err = fails(capsys, "run", "--resume", run, "--quiet")
    assert (expected if name != "state.json" else "incomplete checkpoint (no state.json)") in err
    assert not (run / "results.json").exists()


def test_metrics_of_the_last_task_survive_a_kill_right_after_its_checkpoint(tmp_path, finished_run, capsys):
    """killed between the last checkpoint and the metrics.csv write, the file kept lacking that task."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").unlink()  # as the kill leaves it: the checkpoint of task 5 and a file 1 task short
    full = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text("".join(full.splitlines(keepends=True)[:-1]))
    (run / ".metrics.csv.tmp-0a1b2c3d.csv").write_text("half a file")  # what a kill mid-write leaves
    (run / ".results.json.tmp-4e5f6a7b.json").write_text("{")
    assert run_cli("run", "--resume", run, "--quiet") == 0
    assert (run / "metrics.csv").read_text() == full
    assert not list(run.glob(".*.tmp-*")), "the temporary files of interrupted writes are removed"


def scalars(tb: Path) -> list[tuple[str, int, float]]:
    """Every scalar point in the event files under ``tb``: (tag, step, value)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    return [(v.tag, e.step, float(tensor_util.make_ndarray(v.tensor)))
            for f in sorted(tb.glob("events.out.tfevents.*")) for e in EventFileLoader(str(f)).Load()
            if e.HasField("summary") for v in e.summary.value]


def test_tensorboard_keeps_one_point_per_step_after_kills(tmp_path, stopped_smoke, smoke_run):
    """the epochs a killed attempt had logged beyond its checkpoint stayed beside the resumed ones."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    shutil.copytree(stopped_smoke, run)
    for _ in range(2):  # two killed attempts, each logged task 3's epoch (step 2) and its accuracy
        with SummaryWriter(str(run / "tb")) as w:
            w.add_scalar("train/loss", 999.0, 2)
            w.add_scalar("eval/accuracy_seen", 999.0, 3)
    assert run_cli("run", "--resume", run, "--quiet") == 0
    points = scalars(run / "tb")
    keys = [(tag, step) for tag, step, _ in points]
    assert len(keys) == len(set(keys)), "one point per tag and step"
    assert 999.0 not in [v for *_, v in points]
    assert sorted(keys) == sorted((t, s) for t, s, _ in scalars(smoke_run()[0] / "tb"))


def test_export_interrupted_between_its_writes_keeps_the_old_pair(tmp_path, finished_run, capsys, monkeypatch):
    """`export --force` stopped between writing the weights and the sidecar left new weights beside the
    old sidecar. Now both go to temporary files first; a stop there leaves the old pair and no temporary file."""
    import sr2lora.inference.export as export

    out = tmp_path / "model.safetensors"
    assert run_cli("export", "--run", finished_run, "--out", out) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    sidecar = json.loads(out.with_suffix(".json").read_text())
    from sr2lora.core.cache import file_sha256

    assert sidecar["weights_sha256"] == file_sha256(out), "the sidecar names the weights it belongs to"

    def interrupted(data):  # Ctrl-C arrives once the new weights are written, before the sidecar is
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "json_safe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_run(finished_run, out, task=3, force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_run_folder_renamed_mid_run_is_a_message(tmp_path):
    """The output folder renamed (or deleted) while the run writes it used to end with a traceback."""
    out, moved = tmp_path / "run", tmp_path / "moved"
    proc = cli_process(*RUN, "--out", out, *FAST, env={"SR2LORA_TEST_PAUSE_IN_CHECKPOINT": "1"})
    try:
        wait_for(out / "config.yaml", proc)
        end = time.monotonic() + 60
        while not list(out.glob(f"{CKPT_DIR}.tmp-*")) and time.monotonic() < end:
            time.sleep(0.01)  # the first checkpoint is being written (and pauses a second)
        out.rename(moved)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert f"{out}: the run folder was removed or renamed while the run wrote into it" in err
    assert "sr2lora run --resume NEW_PLACE" in err


def test_resume_on_a_read_only_disk_says_what_can_be_done(tmp_path, stopped_smoke, capsys):
    """The message used to advise --out, which a resume refuses."""
    with small_tmpfs(tmp_path / "disk", size="4m") as disk:
        run = disk / "run"
        shutil.copytree(stopped_smoke, run)
        done = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {done.stderr.strip()}")
        err = fails(capsys, "run", "--resume", run, "--quiet")
        assert f"output folder {run}: cannot create or write it (Read-only file system)" in err
        assert "copy the run folder to a writable disk and resume the copy" in err and "--out" not in err


def test_report_on_a_full_disk_keeps_the_previous_report(tmp_path, finished_run, capsys):
    """A report that failed on a full disk used to leave old and new files mixed."""
    with small_tmpfs(tmp_path / "disk", size="2m") as disk:
        out = disk / "report"
        assert run_cli("report", finished_run, "--out", out) == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        fill(disk, 48 * 1024)
        err = fails(capsys, "report", finished_run, "--out", out)
        assert f"report: cannot write into {out}: No space left on device; a report there before is unchanged" in err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_on_a_device_the_machine_lacks(tmp_path, stopped_smoke, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    shutil.copytree(stopped_smoke, run)
    err = fails(capsys, "run", "--resume", run, "--quiet", "train.device=cuda")
    assert "train.device=cuda: this machine has no CUDA device" in err
