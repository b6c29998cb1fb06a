"""Data-parallel runs with torchrun (2 CPU processes, gloo): a smoke run, and exact distributed evaluation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST, read_results, run_cli
from sr2lora.core.distributed import DistContext, interleave_batches, per_rank_batch, shard_batches

FAST = [*FAST, "train.eval_batch_size=48"]  # 240 test images: 5 batches, uneven


def torchrun(*args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N ARGS`` (a free rendezvous port; CPU, gloo)."""
    exe = Path(sys.executable).parent / "torchrun"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        pytest.skip("torchrun not available")
    cmd += ["--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


# ---------------------------------------------------------------- sharding (no process group needed)


@pytest.mark.parametrize("n,bs,world", [(240, 48, 2), (240, 128, 2), (7, 3, 3), (5, 8, 2), (0, 4, 2),
                                        (100, 7, 4)])
def test_shard_batches_round_robin_and_back(n, bs, world):
    idx = np.arange(1000, 1000 + n)
    parts = [shard_batches(idx, bs, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert sum(len(p) for p in parts) == n
    for r, p in enumerate(parts):  # rank r's batches are exactly batches r, r+world, ... of the single run
        batches = [p[i : i + bs] for i in range(0, len(p), bs)]
        expected = [idx[k * bs : (k + 1) * bs] for k in range(r, -(-n // bs), world)]
        assert len(batches) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(batches, expected))
    back = interleave_batches([torch.from_numpy(p) for p in parts], n, bs)
    assert torch.equal(back, torch.from_numpy(idx))


def test_per_rank_batch_splits_the_global_batch():
    from sr2lora.config import ConfigError

    assert per_rank_batch(32, DistContext(0, 2)) == 16
    assert per_rank_batch(32, DistContext()) == 32
    with pytest.raises(ConfigError, match="train.batch_size"):
        per_rank_batch(30, DistContext(0, 4))


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_torchrun_smoke_run_and_exact_distributed_evaluation(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", single, *FAST) == 0

    # 1. the smoke preset trains with DDP on 2 CPU processes; rank 0 writes the usual run folder
    res = torchrun("-m", "sr2lora", "run", "--preset", "smoke", "--out", str(multi), "--quiet", *FAST)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("final accuracy") == 1  # one summary line (rank 0)
    r1, r2 = read_results(single), read_results(multi)
    assert set(r2) == set(r1)
    for key in ("num_tasks", "class_order", "task_offsets", "task_test_counts", "method", "dataset"):
        assert r2[key] == r1[key], key
    m = r2["accuracy_matrix"]
    assert len(m) == 5 and all(0 <= v <= 100 for t, row in enumerate(m) for v in row[: t + 1])
    assert (multi / "config.yaml").is_file() and (multi / "metrics.csv").is_file()
    assert (multi / "checkpoint" / "state.json").is_file()
    assert not list(multi.glob("checkpoint.tmp-*")) and not list(multi.glob(".sr2lora-write-probe-*"))
    rows = (multi / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5  # header + one epoch per task, written once

    # 2. evaluation of a fixed model (the single-process run's checkpoint) sharded over 1 and 2 processes
    out1, out2 = tmp_path / "eval1.json", tmp_path / "eval2.json"
    env = {**os.environ}
    res = subprocess.run([sys.executable, "-m", "sr2lora.analysis.restore", "evaluate", str(single), str(out1)],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun("-m", "sr2lora.analysis.restore", "evaluate", str(single), str(out2))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    e1, e2 = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert (e1["world_size"], e2["world_size"]) == (1, 2)
    assert e2["row"] == e1["row"] and e2["overall"] == e1["overall"] and e2["counts"] == e1["counts"]
    assert e2["predictions"] == e1["predictions"]
    # and both equal what the run itself reported after its last task
    assert e1["row"] == r1["accuracy_matrix"][-1]


@pytest.mark.slow
def test_torchrun_needs_an_out_folder(tmp_path):
    res = torchrun("-m", "sr2lora", "run", "--preset", "smoke", "--quiet", *FAST)
    assert res.returncode != 0
    assert "needs --out" in res.stderr
