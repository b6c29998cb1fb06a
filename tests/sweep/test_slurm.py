"""The slurm launcher against a real one-node SLURM cluster (Debian's slurm-wlm + munge on localhost, started by
``.ci/slurm-up.sh``): a grid submitted through submitit finishes and ``--status`` shows it; a cell cancelled with
``scancel`` mid-run resumes from its checkpoint when the same sweep command is given again, and ends with the
accuracies of an uninterrupted run. Where SLURM cannot be set up (not root, no apt-get) these tests skip with the
reason; with ``CI_REQUIRE_SLURM=1`` (``.ci/run``) they fail instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FAST, read_results, run_cli

ROOT = Path(__file__).resolve().parents[2]
ACC = ("accuracy_matrix", "acc_curve", "final_acc", "avg_acc", "forgetting")
SLURM = ["--launcher", "slurm", "--cpus-per-cell", "1", "--time", "10"]


@pytest.fixture(scope="module")
def slurm_cluster():
    """The one-node cluster, started (or found up) by .ci/slurm-up.sh."""
    why = None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "a local SLURM cluster needs root and apt-get (Debian's slurm-wlm and munge)"
    else:
        res = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            why = f"the local SLURM cluster did not start: {res.stdout[-500:]}{res.stderr[-500:]}"
    if why is not None:
        if os.environ.get("CI_REQUIRE_SLURM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    pytest.importorskip("submitit")
    return True


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True, text=True).stdout.strip()
    return out or "GONE"


def test_dry_run_prints_the_cells_and_the_sbatch_parameters(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    assert run_cli("sweep", "--preset", "smoke", "--out", out, "--seeds", "0,1", *SLURM, "--partition", "gpu",
                   "--account", "lab", "--qos", "high", "--mem-per-cell", "4", "--sbatch", "constraint=a100",
                   "--dry-run", "model.rank=2,4", *FAST) == 0
    text = capsys.readouterr().out
    assert "4 runs" in text and "one job array of 4 cell(s)" in text
    for flag in ("--partition=gpu", "--account=lab", "--qos=high", "--constraint=a100", "--cpus-per-task=1",
                 "--time=10", "--mem=4GB"):
        assert f"#SBATCH {flag}" in text, flag
    assert text.count("run --continue --preset smoke") == 4
    assert not out.exists()  # nothing submitted, nothing written


@pytest.mark.slow
def test_a_grid_of_four_cells_finishes_on_slurm(slurm_cluster, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "smoke", "--out", out, "--seeds", "0,1", *SLURM, "model.rank=2,4",
            "train.threads=1", "train.precision=fp32", *FAST]
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    assert printed.count("submitted as SLURM job") == 4 and "4 of 4 cells finished" in printed
    assert run_cli("sweep", "--status", out) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "4 done"
    for name in ("rank=2/seed0", "rank=2/seed1", "rank=4/seed0", "rank=4/seed1"):
        assert read_results(out / name)["final_acc"] > 0
        row = next(line for line in lines if line.startswith(name))
        assert ".submitit/" in row and "_log.out" in row  # the job's log
    assert (out / "report" / "report.md").is_file()


@pytest.mark.slow
def test_a_cancelled_cell_resumes_when_the_sweep_is_given_again(slurm_cluster, tmp_path, capsys):
    """scancel once the cell's first task is checkpointed; the same command again resumes it (from task 2) and it
    ends with the accuracies of the same cell run without interruption."""
    cell = ["train.epochs=4", "ca.epochs=2", "train.threads=1", "train.precision=fp32"]
    reference = tmp_path / "reference"
    assert run_cli("run", "--preset", "smoke", "--out", reference, "--quiet", *cell) == 0

    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "smoke", "--out", out, *SLURM, "--no-wait", *cell]
    assert run_cli(*args) == 0
    run_dir = out / "base" / "seed1993"
    job = next(line.split()[-1] for line in capsys.readouterr().out.splitlines() if "submitted as SLURM job" in line)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint" / "state.json").is_file():
        assert time.time() < deadline and squeue_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), (
            f"job {job} ended before its first checkpoint")
        time.sleep(0.2)
    subprocess.run(["scancel", job], check=True)
    while squeue_state(job) != "GONE":
        assert time.time() < deadline
        time.sleep(0.5)
    assert not (run_dir / "results.json").exists()
    assert run_cli("sweep", "--status", out) == 1  # the cancelled cell counts as failed until it is run again
    status = capsys.readouterr().out
    assert "cancelled" in status.lower()

    assert run_cli(*[a for a in args if a != "--no-wait"]) == 0
    printed = capsys.readouterr().out
    assert "resume" in printed and "submitted as SLURM job" in printed
    log = next((out / ".submitit").glob(f"{printed.split('submitted as SLURM job ')[1].split()[0]}_0_log.out"))
    assert "task 1/5" not in log.read_text()  # resumed from its checkpoint: task 1 is not trained again
    resumed, uninterrupted = read_results(run_dir), read_results(reference)
    assert {k: resumed[k] for k in ACC} == {k: uninterrupted[k] for k in ACC}
    assert run_cli("sweep", "--status", out) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 done"
