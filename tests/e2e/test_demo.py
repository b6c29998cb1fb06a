"""`sr2lora demo`: the methods side by side, in parallel single-thread processes or one after another."""

import subprocess
import sys

import pytest

from conftest import read_results, run_cli, sigterm_cli_after

# Two epochs make a task long enough to be interrupted in the middle of the run.
CFG = ["train.epochs=2", "ca.epochs=1"]
METHODS = ["--methods", "sr2lora,seqlora"]
METRICS = ("final_acc", "avg_acc", "forgetting", "plasticity", "accuracy_matrix")


def metrics(run) -> dict:
    r = read_results(run)
    return {k: r[k] for k in METRICS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The demo one run after another, in this process, one thread each: what the parallel demo must give."""
    out = tmp_path_factory.mktemp("reference") / "demo"
    assert run_cli("demo", "--preset", "smoke", "--out", out, "--jobs", "1", "--quiet", *METHODS, *CFG,
                   "train.threads=1") == 0
    return out


@pytest.mark.slow
def test_parallel_demo_equals_sequential_and_is_reused(tmp_path, capsys, reference):
    par = tmp_path / "par"
    assert run_cli("demo", "--preset", "smoke", "--out", par, "--jobs", "2", "--quiet", *METHODS, *CFG) == 0
    out = capsys.readouterr().out
    assert "as 2 single-thread processes" in out
    assert "[sr2lora]" in out and "[seqlora]" in out  # the children's lines, prefixed
    assert "precision fp32" in out or "precision bf16" in out
    for m in ("sr2lora", "seqlora"):
        r = read_results(par / m)
        assert r["threads"] == 1 and r["method"] == m
        assert (par / "logs" / f"{m}.log").is_file()
        assert metrics(par / m) == metrics(reference / m), m  # same experiment, same numbers
    assert (par / "report" / "report.md").is_file()

    before = {m: (par / m / "results.json").stat().st_mtime_ns for m in ("sr2lora", "seqlora")}
    assert run_cli("demo", "--preset", "smoke", "--out", par, "--jobs", "1", "--quiet", *METHODS, *CFG) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 2  # thread count is not the experiment
    assert before == {m: (par / m / "results.json").stat().st_mtime_ns for m in before}


def test_demo_refuses_a_non_positive_jobs(tmp_path, capsys):
    assert run_cli("demo", "--preset", "smoke", "--out", tmp_path / "d", "--jobs", "0") == 2
    assert "--jobs" in capsys.readouterr().err
    assert not (tmp_path / "d" / "sr2lora").exists()


@pytest.mark.slow
def test_sigterm_stops_the_children_and_the_demo_continues(tmp_path, reference):
    """SIGTERM to a parallel demo: its runs stop cleanly (exit 143, no process left), and the same command
    afterwards resumes the interrupted runs and finishes with the uninterrupted demo's results."""
    out = tmp_path / "demo"
    args = ["--preset", "smoke", "--out", str(out), "--jobs", "2", "--quiet", *METHODS, *CFG]
    # stop once a child has finished its first task (a checkpoint exists)
    code, before, after = sigterm_cli_after(["demo", *args], "task 1/5")
    assert code == 143, before + after
    assert "run the same `sr2lora demo` again" in after
    children = subprocess.run(["pgrep", "-f", f"--out {out}/"], capture_output=True, text=True).stdout.split()
    assert children == []
    assert any((out / m / "checkpoint").is_dir() for m in ("sr2lora", "seqlora"))
    assert not (out / "sr2lora" / "results.json").exists()

    done = subprocess.run([sys.executable, "-m", "sr2lora", "demo", *args], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming the interrupted run" in done.stdout
    for m in ("sr2lora", "seqlora"):
        assert metrics(out / m) == metrics(reference / m), m


def test_assets_command_builds_and_reports_a_presets_cache(capsys):
    assert run_cli("assets", "--preset", "smoke") == 0
    out = capsys.readouterr().out
    assert "smoke:" in out and "dataset smoke: 20 classes" in out
    assert run_cli("assets", "--preset", "no-such-preset") == 2
    assert "no preset named" in capsys.readouterr().err
