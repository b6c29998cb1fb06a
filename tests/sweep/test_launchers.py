"""The sweep's launchers on this machine: ``local`` runs N cells at once and gives what ``serial`` gives; every
cell is an idempotent ``run --continue``; the record and ``--status`` say where each cell stands."""

from __future__ import annotations

import json

from conftest import FAST, read_results, run_cli
from sr2lora.sweep import SweepRecord, plan_paper_grid

# 4 cells: two ranks x two seeds, one thread each (the local launcher's runtime, given to serial too)
GRID = ["model.rank=2,4", "train.threads=1", "train.precision=fp32", *FAST]
ACC = ("accuracy_matrix", "acc_curve", "final_acc", "avg_acc", "forgetting")


def intervals(out) -> list[tuple[float, float]]:
    doc = json.loads((out / "sweep.json").read_text())
    return [(a["t0"], a["t1"]) for c in doc["cells"].values() for a in c["attempts"]]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_local_runs_two_cells_at_a_time_with_the_accuracies_of_serial(tmp_path, capsys):
    serial, local = tmp_path / "serial", tmp_path / "local"
    assert run_cli("sweep", "--preset", "smoke", "--out", serial, "--seeds", "0,1", "--quiet", *GRID) == 0
    assert run_cli("sweep", "--preset", "smoke", "--out", local, "--seeds", "0,1", "--launcher", "local",
                   "--jobs", "2", *GRID) == 0
    printed = capsys.readouterr().out
    cells = ["rank=2/seed0", "rank=2/seed1", "rank=4/seed0", "rank=4/seed1"]
    for name in cells:
        assert f"[{name}] task 5/5" in printed  # each cell's lines, prefixed with its name
        a, b = read_results(serial / name), read_results(local / name)
        assert {k: a[k] for k in ACC} == {k: b[k] for k in ACC}, name
        assert b["threads"] == 1
        assert (local / "logs" / (name.replace("/", "__") + ".log")).is_file()
    assert most_at_once(intervals(serial)) == 1 and most_at_once(intervals(local)) == 2
    assert (local / "report" / "report.md").is_file()

    # the same command again: every cell is finished, nothing runs
    assert run_cli("sweep", "--preset", "smoke", "--out", local, "--seeds", "0,1", "--launcher", "local",
                   "--jobs", "2", *GRID) == 0
    assert capsys.readouterr().out.count("finished already, skipped") == 4
    assert run_cli("sweep", "--status", local) == 0
    status = capsys.readouterr().out
    assert status.strip().splitlines()[-1] == "4 done"
    assert all(len(c["attempts"]) == 1 for c in SweepRecord.read(local).doc["cells"].values())


def test_status_names_a_failed_cell_and_its_last_log_line(tmp_path, capsys):
    """A cell that diverges fails (exit 2), the others finish; --status exits 1 and shows the failed cell's log."""
    out = tmp_path / "sweep"
    assert run_cli("sweep", "--preset", "smoke", "--out", out, "--launcher", "local", "--jobs", "2",
                   "train.lr=0.005,1e30", "train.precision=fp32", *FAST) == 1
    capsys.readouterr()
    assert run_cli("sweep", "--status", out) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert "done" in rows["lr=0.005/seed1993"]
    failed = rows["lr=1e30/seed1993"]
    assert " failed " in failed and "exit 2" in failed and "non-finite loss" in failed
    assert run_cli("sweep", "--status", tmp_path / "nowhere") == 2
    # the report covers the finished cell and names the missing one
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["num_runs"] == 1 and report["missing"] == [str(out / "lr=1e30" / "seed1993")]
    assert "## Missing runs" in (out / "report" / "report.md").read_text()


def test_the_report_says_how_many_planned_seeds_a_group_averages(smoke_run, tmp_path):
    """A group with one of its two planned seeds finished: "1 of 2" in the table, the missing run listed."""
    from sr2lora.config import load_config
    from sr2lora.report import build_report

    done, _ = smoke_run("seed=0")
    missing = tmp_path / "seed1"
    doc = build_report([done], tmp_path / "report", missing=[(missing, load_config("smoke", [*FAST, "seed=1",
                                                                                            "train.precision=fp32"]))])
    (group,) = doc["groups"]
    assert group["n"] == 1 and group["planned"] == 2 and group["missing"] == [str(missing)]
    assert "| 1 of 2 |" in (tmp_path / "report" / "report.md").read_text()


def test_run_continue_starts_resumes_or_does_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--continue", "--preset", "smoke", "--out", out, "--quiet", *FAST, "train.precision=fp32"]
    assert run_cli(*args) == 0
    first = (out / "results.json").read_bytes()
    assert run_cli(*args) == 0
    assert "nothing to do" in capsys.readouterr().out and (out / "results.json").read_bytes() == first
    assert run_cli(*args[:-1], "model.rank=2") == 2  # another experiment in the folder: refused
    assert "model.rank" in capsys.readouterr().err


def test_paper_grid_plans_the_papers_cells(tmp_path):
    cells = plan_paper_grid(tmp_path, datasets=["imagenet-r"], tasks=[10, 20], seeds=[0, 1993],
                            methods=["sr2lora", "inflora"], overrides=["data.root=/data/imagenet-r"])
    assert len(cells) == 8
    assert cells[0].out == tmp_path / "imagenet-r-10t" / "sr2lora" / "seed0"
    assert {c.cfg.method.name for c in cells} == {"sr2lora", "inflora"}
    assert all(c.cfg.data.root == "/data/imagenet-r" and c.cfg.seed in (0, 1993) for c in cells)
    cmd = cells[0].command("python")
    assert cmd[:5] == ["python", "-m", "sr2lora", "run", "--continue"] and "--out" in cmd
    assert len(plan_paper_grid(tmp_path)) == 4 * 4 * 3 * 10  # the whole grid: 480 cells
