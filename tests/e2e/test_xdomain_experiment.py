"""The xdomain experiment script's plan: what it runs, what it reuses, and the selection it makes.

Only configs and small results.json files are built here; no run is started.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "xdomain_experiment.py"


@pytest.fixture(scope="module")
def xp():
    spec = importlib.util.spec_from_file_location("xdomain_experiment", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def test_plan_covers_the_issue_grid(xp, tmp_path):
    jobs = xp.plan(tmp_path, ["main", "others", "select"], xp.TASKS, None)
    main = {(j.config, j.tasks, j.seed) for j in jobs if j.stage == "main"}
    assert main == {(m, t, s) for m in xp.MAIN for t in xp.TASKS for s in xp.SEEDS}
    others = [j for j in jobs if j.stage == "others"]
    assert {j.config for j in others} == set(xp.OTHERS)
    assert all((j.tasks, j.seed) == (xp.SELECT_TASKS, xp.SELECT_SEED) for j in others)
    select = [j for j in jobs if j.stage == "select"]
    assert {j.config for j in select} == {*xp.GRID, "frozen"}
    assert all("data.val_fraction=0.2" in j.all_overrides("fp32") for j in select)
    assert len({j.out for j in jobs}) == len(jobs)  # no run is planned twice


def test_selected_setting_reuses_runs_with_the_same_config(xp, tmp_path):
    # The reference settings resolve to the main stage's sr2lora config at every task count and seed.
    ref = xp.plan(tmp_path, ["selected"], xp.TASKS, "none-w1-ref")
    assert len(ref) == len(xp.TASKS) * len(xp.SEEDS)
    assert all(j.out == tmp_path / f"{j.tasks}t" / "sr2lora" / f"seed{j.seed}" for j in ref)
    # With a ridge head only 10 tasks / seed 1993 exists already (the others stage's sr2lora-ridge).
    ridge = xp.plan(tmp_path, ["selected"], xp.TASKS, "none-w1-ref-ridge")
    reused = [j for j in ridge if j.out.parent.name == "sr2lora-ridge"]
    assert [(j.tasks, j.seed) for j in reused] == [(xp.SELECT_TASKS, xp.SELECT_SEED)]
    # A setting that changes a knob is run under its own name everywhere.
    cos = xp.plan(tmp_path, ["selected"], xp.TASKS, "none-w0.1-cos")
    assert all(j.out.parent.name == "sr2lora-none-w0.1-cos" for j in cos)


def _result(folder: Path, acc: float) -> None:
    folder.mkdir(parents=True)
    res = {"final_acc": acc, "avg_acc": acc + 1, "forgetting": 2.0, "plasticity": acc + 3, "seconds": 10.0}
    (folder / "results.json").write_text(json.dumps(res))


def test_selection_needs_every_setting_and_picks_the_best_validation_score(xp, tmp_path):
    names = list(xp.GRID)
    for i, name in enumerate(names[:-1]):
        _result(tmp_path / "select" / name / f"seed{xp.SELECT_SEED}", 50.0 + i)
    assert xp.selection(tmp_path)[1] is None  # one setting still missing: nothing selected yet
    _result(tmp_path / "select" / names[-1] / f"seed{xp.SELECT_SEED}", 40.0)
    _result(tmp_path / "select" / "frozen" / f"seed{xp.SELECT_SEED}", 45.0)
    val, best, frozen = xp.selection(tmp_path)
    assert best == names[-2] and val[best] == 50.0 + len(names) - 2 and frozen == 45.0


def test_selected_rows_label_the_reused_runs(xp, tmp_path):
    for t in xp.TASKS:
        for s in xp.SEEDS:
            _result(tmp_path / f"{t}t" / "sr2lora" / f"seed{s}", 60.0 + s / 1000)
    table = xp.collect(tmp_path)
    assert xp.selected_rows(tmp_path, table, "none-w1-ref") == "sr2lora"
    # A partly reused setting gets its own row, which includes the reused run.
    _result(tmp_path / f"{xp.SELECT_TASKS}t" / "sr2lora-ridge" / f"seed{xp.SELECT_SEED}", 70.0)
    _result(tmp_path / f"{xp.SELECT_TASKS}t" / "sr2lora-none-w1-ref-ridge" / "seed0", 68.0)
    table = xp.collect(tmp_path)
    label = xp.selected_rows(tmp_path, table, "none-w1-ref-ridge")
    row = table[xp.SELECT_TASKS][label]
    assert label == "sr2lora-none-w1-ref-ridge" and sorted(row["seeds"]) == sorted([0, xp.SELECT_SEED])
    assert row["final_acc"][0] == pytest.approx(69.0, abs=1e-9)


def _saved_run(folder: Path, preset: str, overrides: list[str]) -> None:
    import yaml

    from sr2lora.config import load_config

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(load_config(preset, overrides).to_dict()))


def test_config_check_ignores_ridge_keys_only_where_no_ridge_head_reads_them(xp, tmp_path):
    linear = xp.Job("main", "sr2lora", 10, 1993, ["method.name=sr2lora"], tmp_path / "linear")
    _saved_run(linear.out, linear.preset, [*linear.all_overrides("fp32"), "classifier.rp_dim=10000"])
    assert xp.config_mismatch(linear, "fp32") == []
    ridge = xp.Job("main", "ranpac", 10, 1993, ["method.name=ranpac"], tmp_path / "ridge")
    _saved_run(ridge.out, ridge.preset, [*ridge.all_overrides("fp32"), "classifier.rp_dim=10000"])
    assert xp.config_mismatch(ridge, "fp32") == ["classifier.rp_dim"]
    other = xp.Job("main", "sr2lora", 10, 1993, ["method.name=sr2lora"], tmp_path / "other")
    _saved_run(other.out, other.preset, [*other.all_overrides("fp32"), "method.weight=0.5"])
    assert xp.config_mismatch(other, "fp32") == ["method.weight"]
