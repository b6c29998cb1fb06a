"""Runs that survive: killed (SIGKILL) mid-task or mid-checkpoint, stopped by SIGINT/SIGTERM, disk full while
writing a checkpoint; each resumed run must give the accuracies of an uninterrupted run with the same seed. (A
full disk during a checkpoint is tried on a real tmpfs in tests/contract/test_trust.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import read_results, run_cli
from sr2lora.core.cache import file_sha256
from sr2lora.runs.checkpoint import PAUSE_ENV, clean_partial
from sr2lora.runs.folder import RunFolder

CKPT_DIR = RunFolder.CHECKPOINT

# Three epochs make a task long enough (most of a second) to be killed in the middle of it.
CFG = ["train.epochs=3", "ca.epochs=1"]
ACC_KEYS = ["accuracy_matrix", "acc_curve", "final_acc", "avg_acc", "forgetting", "bwt", "plasticity",
            "class_order", "task_test_counts"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", out, *CFG) == 0
    return read_results(out)


def start_run(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m sr2lora run --preset smoke` as a real process (so it can be killed)."""
    full_env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, "-m", "sr2lora", "run", "--preset", "smoke", "--quiet", "--out", str(out), *CFG, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``cond`` every few ms; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc={proc.returncode}) before the awaited point:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.005)


def read_task(state_file: Path) -> int | None:
    """The task index in a state.json, or None while it does not exist (or is being swapped)."""
    try:
        return int(json.loads(state_file.read_text())["task"])
    except (OSError, ValueError, KeyError):
        return None


def ckpt_task(run: Path) -> int | None:
    return read_task(run / CKPT_DIR / "state.json")


def assert_same_accuracies(run: Path, reference: dict) -> None:
    r = read_results(run)
    for key in ACC_KEYS:
        assert r[key] == reference[key], key


def test_sigkill_during_task_3_then_resume_is_exact(tmp_path, reference):
    out = tmp_path / "run"
    proc = start_run(out)
    wait_for(lambda: ckpt_task(out) == 1, proc)  # tasks 1 and 2 are done: task 3 starts now
    time.sleep(0.2)  # into task 3's training steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert ckpt_task(out) == 1 and not (out / "results.json").exists(), "the kill must land inside task 3"
    assert run_cli("run", "--resume", out, "--quiet") == 0
    assert_same_accuracies(out, reference)


def test_sigkill_during_checkpoint_write_then_resume_is_exact(tmp_path, reference):
    out = tmp_path / "run"
    proc = start_run(out, env={PAUSE_ENV: "0.5"})  # save_checkpoint sleeps with its temp folder complete

    def writing_task_2() -> bool:
        return any(read_task(tmp / "state.json") == 1 for tmp in out.glob(f"{CKPT_DIR}.tmp-*"))

    wait_for(writing_task_2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt_task(out) == 0, "the previous checkpoint must still be the visible one"
    assert list(out.glob(f"{CKPT_DIR}.tmp-*")), "the kill should leave the unfinished temp folder behind"
    assert run_cli("run", "--resume", out, "--quiet") == 0
    assert not list(out.glob(f"{CKPT_DIR}.*")), "resume removes temp folders"
    assert_same_accuracies(out, reference)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly(tmp_path, sig, code):
    """The stop leaves the last complete checkpoint, like a kill, so the resume tests above cover it."""
    out = tmp_path / "run"
    proc = start_run(out)
    wait_for(lambda: ckpt_task(out) == 0, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert f"interrupted; resume with sr2lora run --resume {out}" in stderr
    assert "Traceback" not in stderr
    assert ckpt_task(out) in (0, 1) and not list(out.glob(f"{CKPT_DIR}.*")), "no partial checkpoint"
    assert not (out / "results.json").exists()


def test_checkpoint_holds_tensors_in_safetensors_and_the_rest_in_json(smoke_run):
    """(A full disk while writing a checkpoint is a test on a real tmpfs: tests/contract/test_trust.py.)"""
    check_checkpoint_contents(smoke_run()[0])


def check_checkpoint_contents(out: Path) -> None:
    """LoRA factors, heads, class statistics, method state in safetensors; position and metrics in JSON."""
    ckpt = out / CKPT_DIR
    files = sorted(p.name for p in ckpt.iterdir())
    assert all(f.endswith(".safetensors") or f in ("state.json", "manifest.json") for f in files), files
    groups = {}
    for f in ckpt.glob("*.safetensors"):
        assert f.read_bytes()[:2] != b"\x80\x04", f"{f} looks like a pickle"
        with safe_open(str(f), framework="pt") as fh:
            groups[f.stem] = list(fh.keys())
    model = groups["model"]
    assert any(".A." in k for k in model) and any(".B." in k for k in model), "LoRA factors"
    assert any(k.startswith("heads.") for k in model), "heads"
    assert not any(k.startswith("vit.") and ".A." not in k and ".B." not in k for k in model), "no frozen weights"
    assert any(k.startswith("mean.") for k in groups["stats"]) and any(k.startswith("chol.") for k in groups["stats"])
    assert "method" in groups
    state = json.loads((ckpt / "state.json").read_text())
    assert state["task"] == 4 and state["num_tasks"] == 5 and len(state["matrix"]) == 5
    assert state["offsets"] == [0, 4, 8, 12, 16, 20] and sorted(state["class_order"]) == list(range(20))
    assert state["config_sha256"] == file_sha256(out / "config.yaml")


def test_clean_partial_restores_a_checkpoint_swapped_out_mid_write(tmp_path):
    """A crash between the two renames of the swap leaves `checkpoint.old-*` and no `checkpoint/`."""
    (tmp_path / f"{CKPT_DIR}.old-123").mkdir()
    (tmp_path / f"{CKPT_DIR}.old-123" / "state.json").write_text('{"task": 3}')
    (tmp_path / f"{CKPT_DIR}.tmp-abc").mkdir()
    clean_partial(tmp_path)
    assert ckpt_task(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [CKPT_DIR]

