"""`sr2lora report` (seed aggregation, gain over frozen, figures), TensorBoard logs and `sr2lora sweep`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, read_results, run_cli
from sr2lora.report.aggregate import forgetting_per_task, mean_std
from sr2lora.report.collect import RunResult, group_runs
from sr2lora.sweep import parse_items, plan_sweep, setting_name, split_values

METRICS = ["final_acc", "avg_acc", "forgetting", "bwt", "plasticity"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, smoke_run) -> Path:
    """Two methods x two seeds of the smoke preset (the shared runs, copied one level deep, to test discovery)."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("sr2lora", "frozen"):
        for seed in (0, 1):
            shutil.copytree(smoke_run(f"method.name={method}", f"seed={seed}")[0], root / method / f"seed{seed}")
    return root


def _md_row(md: str, name: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no table row {name!r}")


def test_report_numbers_match_runs(runs, tmp_path):
    out = tmp_path / "report"
    assert run_cli("report", runs, "--out", out) == 0
    for name in ("report.md", "report.html", "report.json"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("*.png"))) >= 4
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    doc = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    groups = {g["method"]: g for g in doc["groups"]}
    assert set(groups) == {"sr2lora", "frozen"} and doc["num_runs"] == 4
    means = {}
    for method, g in groups.items():
        res = [read_results(runs / method / f"seed{s}") for s in (0, 1)]
        assert g["n"] == 2 and sorted(g["seeds"]) == [0, 1] and g["label"] == ""
        row = _md_row(md, method)
        for k, m in enumerate(METRICS):
            vals = np.array([r[m] for r in res])
            mu, sd = vals.mean(), vals.std(ddof=1)
            assert g["metrics"][m]["mean"] == pytest.approx(mu, abs=1e-9)
            assert g["metrics"][m]["std"] == pytest.approx(sd, abs=1e-9)
            assert row[3 + k] == f"{mu:.2f} ± {sd:.2f}", (method, m)
        curves = np.array([r["acc_curve"] for r in res])
        assert g["acc_curve"]["mean"] == pytest.approx(list(curves.mean(0)))
        assert g["acc_curve"]["std"] == pytest.approx(list(curves.std(0, ddof=1)))
        # per-task forgetting averages to the runs' forgetting
        assert np.mean(g["forgetting_per_task"]["mean"]) == pytest.approx(g["metrics"]["forgetting"]["mean"])
        means[method] = {m: g["metrics"][m]["mean"] for m in ("final_acc", "avg_acc")}
    gain = groups["sr2lora"]["gain_over_frozen"]
    assert groups["frozen"]["gain_over_frozen"] is None
    for m in ("final_acc", "avg_acc"):
        assert gain[m] == pytest.approx(means["sr2lora"][m] - means["frozen"][m])
    row = _md_row(md, "sr2lora")
    assert row[-2] == f"{gain['final_acc']:+.2f}" and row[-1] == f"{gain['avg_acc']:+.2f}"


def test_tensorboard_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs / "sr2lora" / "seed0"
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/reg", "train/lr", "eval/accuracy_seen", "eval_task/task_01"} <= tags
    r = read_results(run)
    assert len(acc.Scalars("train/loss")) == r["num_tasks"]  # one epoch per task
    seen = [e.value for e in acc.Scalars("eval/accuracy_seen")]
    assert seen == pytest.approx(r["acc_curve"], abs=1e-4)


def test_grouping_labels_and_std():
    def run(seed, weight, rank=4):
        cfg = {"seed": seed, "method.name": "sr2lora", "method.weight": weight, "model.rank": rank,
               "train.device": "cpu" if seed else "auto"}
        return RunResult(Path(f"r{seed}{weight}"), {"method": "sr2lora", "preset": "p", "seed": seed}, cfg)

    groups = group_runs([run(0, 0.5), run(1, 0.5), run(0, 2.0)])
    assert [(g.label, len(g.runs)) for g in groups] == [("weight=0.5", 2), ("weight=2.0", 1)]
    assert mean_std([3.0]) == (3.0, 0.0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))
    assert forgetting_per_task([[80, None, None], [70, 90, None], [60, 85, 50]]) == [20.0, 5.0]


def test_report_errors(tmp_path):
    assert run_cli("report", tmp_path) == 2  # no run inside


# ---------------------------------------------------------------- sweep


def test_sweep_value_syntax():
    assert split_values("0.1,1,10") == ["0.1", "1", "10"]
    assert split_values("[0,1]") == ["[0,1]"]
    assert split_values("[0,1];[2,3]") == ["[0,1]", "[2,3]"]
    assert split_values("all,first:2,[0, 3]") == ["all", "first:2", "[0, 3]"]
    assert split_values("'a,b'") == ["'a,b'"]
    axes, fixed = parse_items(["method.layers=[0,1];all", "model.rank=2,4", "train.epochs=1",
                               "method.layers_seed=3"])
    assert axes == {"method.layers": ["[0,1]", "all"], "model.rank": ["2", "4"]}
    assert fixed == ["train.epochs=1", "method.layers_seed=3"]
    assert setting_name({"method.layers": "[0,1]", "model.rank": "2"}) == "layers=0-1__rank=2"


def test_sweep_dry_run_expansion(tmp_path, capsys):
    out = tmp_path / "sweep"
    runs = plan_sweep("smoke", ["method.layers=first:2;[0,3]", "model.rank=2,4", *FAST], out, [0, 7])
    assert len(runs) == 8
    assert [r.cfg.method.options["layers"] for r in runs[:4]] == ["first:2"] * 4
    assert runs[4].cfg.method.options["layers"] == [0, 3]
    assert [r.cfg.model.rank for r in runs[:4]] == [2, 2, 4, 4]
    assert [r.seed for r in runs[:2]] == [0, 7] and all(r.cfg.train.epochs == 1 for r in runs)
    assert runs[5].out == out / "layers=0-3__rank=2" / "seed7"
    assert run_cli("sweep", "--preset", "smoke", "--out", out, "--seeds", "0,7", "--dry-run",
                   "method.layers=first:2;[0,3]", "model.rank=2,4", *FAST) == 0
    text = capsys.readouterr().out
    assert "2 setting(s)" not in text and "4 setting(s) x 2 seed(s) = 8 runs" in text
    assert not out.exists()
    assert run_cli("sweep", "--preset", "smoke", "--out", out, "--dry-run", "model.rank=0,2") == 2


def test_sweep_runs_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--preset", "smoke", "--out", out, "--quiet", "method.weight=0.5,2", *FAST]
    assert run_cli(*args) == 0
    dirs = [out / "weight=0.5" / "seed1993", out / "weight=2" / "seed1993"]
    res = [read_results(d) for d in dirs]
    assert [r["method"] for r in res] == ["sr2lora", "sr2lora"]
    doc = json.loads((out / "report" / "report.json").read_text())
    assert sorted(g["label"] for g in doc["groups"]) == ["weight=0.5", "weight=2.0"]
    # a finished run is skipped; one that lost its results.json resumes from its last checkpoint
    (dirs[1] / "results.json").unlink()
    capsys.readouterr()
    assert run_cli(*args) == 0
    text = capsys.readouterr().out
    assert "finished already, skipped" in text and "resuming" in text
    assert read_results(dirs[1])["accuracy_matrix"] == res[1]["accuracy_matrix"]


def test_two_reports_into_one_folder_at_once_both_finish(runs, tmp_path):
    """Two sweeps over one folder end with a report each: neither removes the other's files in progress as
    leftovers of a killed report (it did: a FileNotFoundError traceback), and the last report is complete."""
    import os
    import subprocess
    import sys

    out = tmp_path / "report"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for _ in range(2):
        procs = [subprocess.Popen([sys.executable, "-m", "sr2lora", "report", str(runs), "--out", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for _ in range(2)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert not any("Traceback" in o for o in outputs), outputs
    assert json.loads((out / "report.json").read_text())["num_runs"] == 4
    assert [p.name for p in out.iterdir() if ".tmp-" in p.name] == []
