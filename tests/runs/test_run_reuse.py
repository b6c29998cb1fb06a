"""One rule for reusing a run folder (sr2lora.runs.reuse), shared by run, run --resume, sweep and demo; and a
sweep stops cleanly on SIGTERM and continues when the same command is given again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import FAST, read_results, run_cli, sigterm_cli_after
from sr2lora.config import dump_config, load_config
from sr2lora.core.errors import OutputError
from sr2lora.runs.reuse import ExperimentMismatch, folder_state


def _planted(folder, overrides, results=False):
    """A run folder as a run leaves it, without training: config.yaml (+ results.json when finished)."""
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(load_config("smoke", overrides), folder / "config.yaml")
    if results:
        (folder / "results.json").write_text(json.dumps({"final_acc": 1.0}), encoding="utf-8")
    return folder


def test_folder_states(tmp_path):
    planned = load_config("smoke", FAST)
    assert folder_state(tmp_path / "absent", planned) == "fresh"
    (tmp_path / "empty").mkdir()
    assert folder_state(tmp_path / "empty", planned) == "fresh"
    assert folder_state(_planted(tmp_path / "unfinished", FAST), planned) == "resumable"
    assert folder_state(_planted(tmp_path / "finished", FAST, results=True), planned) == "done"
    # runtime-only keys (threads, device, data workers...) are not the experiment
    runtime = load_config("smoke", [*FAST, "train.threads=1", "data.num_workers=2", "train.device=cpu"])
    assert folder_state(tmp_path / "finished", runtime) == "done"


def test_another_experiment_is_refused_naming_what_differs(tmp_path):
    run = _planted(tmp_path / "run", [*FAST, "model.rank=2"], results=True)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ExperimentMismatch) as info:
        folder_state(run, load_config("smoke", [*FAST, "model.rank=4", "seed=7"]), hint="do this instead")
    msg = str(info.value)
    assert info.value.changed == ["model.rank", "seed"]
    assert "model.rank: 2 there, 4 planned" in msg and "seed:" in msg and msg.endswith("Do this instead")
    assert isinstance(info.value, OutputError)
    assert sorted(p.name for p in run.iterdir()) == before  # nothing touched


def test_damaged_folders_are_refused(tmp_path):
    planned = load_config("smoke", FAST)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text("{}", encoding="utf-8")
    with pytest.raises(OutputError, match="results.json but no config.yaml"):
        folder_state(tmp_path / "a", planned)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text("model: {rank: [not, a, number]}\n", encoding="utf-8")
    with pytest.raises(OutputError, match="config cannot be read"):
        folder_state(tmp_path / "b", planned)


def test_run_demo_and_sweep_refuse_another_experiment(tmp_path, capsys):
    # run --out: any run there is refused; another experiment is named
    other = _planted(tmp_path / "run", [*FAST, "model.rank=2"])
    assert run_cli("run", "--preset", "smoke", "--out", other, "--quiet", *FAST, "model.rank=4") == 2
    assert "model.rank: 2 there, 4 planned" in capsys.readouterr().err
    # demo: a method folder of another experiment is no longer silently deleted
    demo = tmp_path / "demo"
    _planted(demo / "frozen", [*FAST, "method.name=frozen", "model.rank=2"], results=True)
    assert run_cli("demo", "--preset", "smoke", "--out", demo, "--methods", "frozen", "--jobs", "1", "--quiet",
                   *FAST) == 2
    err = capsys.readouterr().err
    assert "model.rank" in err and "--fresh" in err
    assert (demo / "frozen" / "results.json").is_file()
    # sweep: refused when planning, before any run starts (also in a dry run)
    sweep = tmp_path / "sweep"
    _planted(sweep / "base" / "seed1993", [*FAST, "model.rank=2"])
    for extra in (["--dry-run"], []):
        assert run_cli("sweep", "--preset", "smoke", "--out", sweep, "--quiet", *extra, *FAST) == 2
        assert "model.rank" in capsys.readouterr().err
    assert sorted(p.name for p in (sweep / "base" / "seed1993").iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_sigterm_stops_a_sweep_cleanly_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "smoke", "--out", out, "--no-report", *FAST]
    # each checkpoint write pauses 1 s (test hook), so the run is surely still going when the signal comes
    code, before, after = sigterm_cli_after(args, "task 1/", dict(os.environ, SR2LORA_TEST_PAUSE_IN_CHECKPOINT="1"))
    assert code == 143, before + after
    assert "run the same `sr2lora sweep` again" in after and "Traceback" not in before + after
    run = out / "base" / "seed1993"
    assert (run / "checkpoint").is_dir() and not (run / "results.json").exists()
    assert not (out / ".sr2lora.lock").exists()  # the sweep's lock was released
    state = json.loads((run / "checkpoint" / "state.json").read_text(encoding="utf-8"))

    done = subprocess.run([sys.executable, "-m", "sr2lora", *map(str, args), "--quiet"], capture_output=True,
                          text=True, timeout=600)  # the same command, without the checkpoint pause
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stdout
    got = read_results(run)  # continued after the checkpointed tasks (their rows kept), up to the last task
    assert len(got["accuracy_matrix"]) == got["num_tasks"] > state["task"] + 1
    assert got["accuracy_matrix"][: state["task"] + 1] == state["matrix"]
