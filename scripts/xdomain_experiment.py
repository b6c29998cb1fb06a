#!/usr/bin/env python
"""Does SR²-LoRA's advantage grow with the number of tasks? Measured on the offline cross-domain benchmark.

The benchmark is `xdomain` (Fashion-MNIST clothes, MNIST digits, clip-art; 60 classes; see docs/xdomain.md),
where LoRA trained on all classes at once (`joint`) is well above a frozen backbone, so adapting matters.

Stages (each a list of `sr2lora run` calls; folders ``<out>/<T>t/<config>/seed<seed>``):

- ``main``: 5, 10 and 20 tasks x seeds 0, 1993, 1996 x `sr2lora` (reference settings), `seqlora`, `frozen`,
  `ncm`, `ranpac`.
- ``others``: 10 tasks, seed 1993: every other method (`entrywise`, `spectral-batch`, `feat-all`,
  `feat-last`, `inflora`, `sdlora`, `ranpac-fsa`, `sr2lora` with a ridge head) and `joint`.
- ``select``: 10 tasks, seed 1993, evaluated on a validation split (``data.val_fraction=0.2``: 20% of each
  class's training images; the test split is never looked at): SR²-LoRA over a small grid of
  ``method.relation_norm`` x ``method.weight`` x ``train.schedule`` x classifier, with `frozen` on the same
  split as the reference point. The setting with the best validation A_T is selected.
- ``selected``: that setting at 5, 10, 20 tasks x the three seeds (needs ``select`` finished). A run whose
  resolved config equals one of another stage (the reference settings are the main `sr2lora`) is reused.

Runs are `sr2lora run` subprocesses, ``--jobs`` at a time with one thread each (on a 2-core machine two
single-thread runs finish sooner than one two-thread run). The script resumes where it stopped: a finished run
(results.json) is reused after checking that its config is the planned one; an interrupted run with a
checkpoint continues with ``sr2lora run --resume``; one interrupted before its first checkpoint starts again.
After running (or with ``--summarize``) it writes ``docs/xdomain_experiment.md``/``.json`` and
``docs/xdomain_experiment.png`` (final accuracy and Ā against the number of tasks, mean ± std over seeds) from
the finished runs' results.json, and ``sr2lora report`` of each task count into ``<out>/report-<T>t`` (its
report.md copied to ``docs/xdomain_reports/report-<T>t.md``).

    .venv/bin/python scripts/xdomain_experiment.py --dry-run             # the plan and what is done
    .venv/bin/python scripts/xdomain_experiment.py --stage main --tasks 10 --jobs 2
    .venv/bin/python scripts/xdomain_experiment.py --summarize            # tables and figure only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

TASKS = (5, 10, 20)
SEEDS = (0, 1993, 1996)
SELECT_SEED = 1993
SELECT_TASKS = 10
TRAINING_FREE = ("frozen", "ncm", "ranpac")
MAIN = {
    "sr2lora": ["method.name=sr2lora"],
    "seqlora": ["method.name=seqlora"],
    "frozen": ["method.name=frozen"],
    "ncm": ["method.name=ncm"],
    "ranpac": ["method.name=ranpac"],
}
OTHERS = {
    "entrywise": ["method.name=entrywise"],
    "spectral-batch": ["method.name=spectral-batch"],
    "feat-all": ["method.name=feat-all"],
    "feat-last": ["method.name=feat-last"],
    "inflora": ["method.name=inflora"],
    "sdlora": ["method.name=sdlora"],
    "ranpac-fsa": ["method.name=ranpac-fsa"],
    "sr2lora-ridge": ["method.name=sr2lora", "classifier.kind=ridge"],
    "joint": ["method.name=joint"],
}
# The selection grid, kept small so that it fits beside the main stage on two cores: the reference, a weaker
# relation term under the cosine schedule, the l2-scaled relation at the weight that brings it to the
# cross-entropy's scale (see docs/stability_plasticity.md for why this λ), and the reference with a ridge head.
# λ is written out in full: YAML reads 1e4 as text.
GRID = {
    "none-w1-ref": ["method.relation_norm=none", "method.weight=1", "train.schedule=reference"],
    "none-w0.1-cos": ["method.relation_norm=none", "method.weight=0.1", "train.schedule=cosine-step"],
    "l2-w10000-cos": ["method.relation_norm=l2", "method.weight=10000", "train.schedule=cosine-step"],
    "none-w1-ref-ridge": ["method.relation_norm=none", "method.weight=1", "train.schedule=reference",
                          "classifier.kind=ridge"],
}
METRICS = ("final_acc", "avg_acc", "forgetting", "plasticity")
LABELS = {"final_acc": "A_T", "avg_acc": "Ā", "forgetting": "forgetting", "plasticity": "plasticity"}


@dataclass
class Job:
    """One planned `sr2lora run`: where it goes and what it is."""

    stage: str
    config: str
    tasks: int
    seed: int
    overrides: list[str]
    out: Path
    extra: list[str] = field(default_factory=list)  # e.g. data.val_fraction for the selection stage

    @property
    def preset(self) -> str:
        return f"xdomain-{self.tasks}t"

    def all_overrides(self, precision: str) -> list[str]:
        return [f"seed={self.seed}", f"train.precision={precision}", *self.overrides, *self.extra]


def sr2lora_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("sr2lora")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sr2lora"]


# --- The plan -----------------------------------------------------------------------------------------------
def plan(root: Path, stages: list[str], tasks: tuple[int, ...], selected: str | None) -> list[Job]:
    """Every run of the chosen stages and task counts, in the order that answers the question soonest.

    The main comparison first, one seed at a time over every task count (so that a partial run already has each
    task count, then a spread), SR²-LoRA with the ridge head right after the first seed (the training-free
    ridge head is the strongest baseline), then the other methods at 10 tasks, the selection, and the selected
    setting.
    """
    jobs: list[Job] = []
    order = sorted(tasks, key=lambda t: (t != SELECT_TASKS, t))
    seeds = sorted(SEEDS, key=lambda s: s != SELECT_SEED)
    others = [Job("others", name, SELECT_TASKS, SELECT_SEED, ov, root / f"{SELECT_TASKS}t" / name / f"seed{SELECT_SEED}")
              for name, ov in OTHERS.items()] if "others" in stages and SELECT_TASKS in tasks else []
    if "main" in stages:
        for seed in seeds:
            for t in order:
                for name, ov in MAIN.items():
                    jobs.append(Job("main", name, t, seed, ov, root / f"{t}t" / name / f"seed{seed}"))
            if seed == SELECT_SEED:  # SR²-LoRA with the ridge head next: is adaptation worth it with a strong head?
                jobs += [j for j in others if j.config == "sr2lora-ridge"]
    jobs += [j for j in others if j not in jobs]
    if "select" in stages and SELECT_TASKS in tasks:
        for name, ov in {**GRID, "frozen": ["method.name=frozen"]}.items():
            ov = ov if name == "frozen" else ["method.name=sr2lora", *ov]
            jobs.append(Job("select", name, SELECT_TASKS, SELECT_SEED, ov, root / "select" / name / f"seed{SELECT_SEED}",
                            ["data.val_fraction=0.2"]))
    if "selected" in stages and selected is not None:
        for seed in seeds:
            for t in order:
                name, ov = f"sr2lora-{selected}", ["method.name=sr2lora", *GRID[selected]]
                out = same_run(root, t, seed, ov) or root / f"{t}t" / name / f"seed{seed}"
                jobs.append(Job("selected", name, t, seed, ov, out))
    return jobs


def same_run(root: Path, tasks: int, seed: int, overrides: list[str]) -> Path | None:
    """The folder of a main or others run whose resolved config equals this one, if any.

    The selection may pick a setting that another stage already runs (the reference settings are the main
    stage's `sr2lora`; the reference with a ridge head is `sr2lora-ridge` at 10 tasks, seed 1993): those runs
    are reused instead of being repeated under a second name.
    """
    from sr2lora.config import experiment_dict, load_config

    def resolved(ov: list[str]) -> dict:
        return experiment_dict(load_config(f"xdomain-{tasks}t", [f"seed={seed}", *ov]))

    want = resolved(overrides)
    candidates = dict(MAIN)
    if (tasks, seed) == (SELECT_TASKS, SELECT_SEED):
        candidates.update(OTHERS)
    for name, ov in candidates.items():
        if resolved(ov) == want:
            return root / f"{tasks}t" / name / f"seed{seed}"
    return None


def status(job: Job) -> str:
    if (job.out / "results.json").is_file():
        return "done"
    if (job.out / "checkpoint").is_dir() or any(job.out.glob("checkpoint.old-*")):
        return "resumable"
    return "started" if job.out.exists() else "todo"


# Keys that only the ridge head reads: a run with another classifier never looks at them.
RIDGE_ONLY = ("classifier.rp_dim", "classifier.lambdas", "classifier.val_fraction", "classifier.seed")


def config_mismatch(job: Job, precision: str) -> list[str]:
    """Keys where a finished run's config.yaml differs from the planned one.

    Runtime keys are ignored, and so are the ridge head's keys when neither config uses the ridge head: the
    first seed-1993 runs were made before the presets fixed ``classifier.rp_dim`` at 2000, and a linear head
    never reads it.
    """
    from sr2lora.classifiers.base import resolve_kind
    from sr2lora.config import load_config
    from sr2lora.runs.reuse import experiment_changes

    saved_file = job.out / "config.yaml"
    if not saved_file.is_file():
        return ["config.yaml missing"]
    want, have = load_config(job.preset, job.all_overrides(precision)), load_config(str(saved_file))
    ignore = {"preset", "description", "base"}
    if "ridge" not in (resolve_kind(want), resolve_kind(have)):
        ignore |= set(RIDGE_ONLY)
    return [k for k in experiment_changes(have, want) if k not in ignore]


def run_one(job: Job, precision: str) -> dict:
    """Run (or resume, or reuse) one job; return its results.json."""
    st = status(job)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    log = job.out.parent / f"{job.out.name}.log"
    if st == "resumable":
        cmd = [*sr2lora_cmd(), "run", "--resume", str(job.out), "--quiet", "train.threads=1"]
    elif st != "done":
        if st == "started":  # interrupted before its first checkpoint: nothing to keep
            shutil.rmtree(job.out)
        job.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*sr2lora_cmd(), "run", "--preset", job.preset, "--out", str(job.out), "--quiet", "train.threads=1",
               *job.all_overrides(precision)]
    if st != "done":
        print(f"{'resume' if st == 'resumable' else 'start'}: {job.out}", flush=True)
        with open(log, "a") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
        print(f"done: {job.out}", flush=True)
    diff = config_mismatch(job, precision)
    if diff:
        raise RuntimeError(f"{job.out}: its config differs from the plan in {', '.join(diff)}; move it away or "
                           "delete it, then run again")
    return json.loads((job.out / "results.json").read_text())


def run_all(jobs: list[Job], workers: int, precision: str) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(run_one, j, precision) for j in jobs]:
            f.result()


# --- Selection ----------------------------------------------------------------------------------------------
def selection(root: Path) -> tuple[dict[str, float], str | None, float | None]:
    """Validation A_T of each grid setting that finished, the best one (only when all finished), frozen's."""
    val: dict[str, float] = {}
    for name in GRID:
        f = root / "select" / name / f"seed{SELECT_SEED}" / "results.json"
        if f.is_file():
            val[name] = json.loads(f.read_text())["final_acc"]
    frozen_file = root / "select" / "frozen" / f"seed{SELECT_SEED}" / "results.json"
    frozen = json.loads(frozen_file.read_text())["final_acc"] if frozen_file.is_file() else None
    best = max(val, key=val.get) if len(val) == len(GRID) else None
    return val, best, frozen


# --- Summary ------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(root: Path) -> dict[int, dict[str, dict]]:
    """tasks -> config -> {metric: (mean, std), 'seeds': [...], 'seconds': mean} over finished runs."""
    out: dict[int, dict[str, dict]] = {}
    for t in TASKS:
        folder = root / f"{t}t"
        if not folder.is_dir():
            continue
        for cdir in sorted(p for p in folder.iterdir() if p.is_dir()):
            row = table_row(sorted(cdir.glob("seed*/results.json")))
            if row:
                out.setdefault(t, {})[cdir.name] = row
    return out


def table_row(runs: list[Path]) -> dict | None:
    """{metric: (mean, std), 'seeds': [...], 'seconds': mean} over these results.json files (None if none)."""
    if not runs:
        return None
    res = [json.loads(f.read_text()) for f in runs]
    row = {m: mean_std([r[m] for r in res]) for m in METRICS}
    row["seeds"] = sorted(int(f.parent.name[4:]) for f in runs)
    row["seconds"] = statistics.mean(r["seconds"] for r in res)
    return row


def selected_rows(root: Path, table: dict[int, dict[str, dict]], best: str) -> str:
    """Put the selected setting's rows into the table (from its own or reused folders); return its label."""
    jobs = plan(root, ["selected"], TASKS, best)
    reused = {j.out.parent.name for j in jobs}
    if len(reused) == 1 and next(iter(reused)) != f"sr2lora-{best}":
        return next(iter(reused))  # every selected run is another stage's run: that row is the selected one
    label = f"sr2lora-{best}"
    for t in TASKS:
        row = table_row(sorted(j.out / "results.json" for j in jobs
                               if j.tasks == t and (j.out / "results.json").is_file()))
        if row:
            table.setdefault(t, {})[label] = row
    return label


def statements(table: dict[int, dict[str, dict]], ours: str) -> list[str]:
    """Plain answers for one SR²-LoRA configuration, from what has finished."""
    lines = []
    margins_seq, margins_free = {}, {}
    for t in sorted(table):
        rows = table[t]
        if ours not in rows:
            continue
        s = rows[ours]["final_acc"]
        for base in TRAINING_FREE:
            if base in rows:
                b = rows[base]["final_acc"]
                gain, spread = s[0] - b[0], max(s[1], b[1])
                if min(len(rows[ours]["seeds"]), len(rows[base]["seeds"])) < 2:
                    lines.append(f"- {t} tasks: `{ours}` vs `{base}`: A_T {gain:+.2f} points from one seed; no "
                                 "verdict before the other seeds have run.")
                    continue
                verdict = ("beats `{b}` by more than" if gain > spread else "is below `{b}` by more than"
                           if gain < -spread else "does not beat `{b}` by more than").format(b=base)
                lines.append(f"- {t} tasks: `{ours}` {verdict} the seeds' spread (A_T "
                             f"{gain:+.2f} points, spread {spread:.2f}; seeds {rows[ours]['seeds']}).")
        if "seqlora" in rows:
            margins_seq[t] = s[0] - rows["seqlora"]["final_acc"][0]
        free = [b for b in TRAINING_FREE if b in rows]
        if free:
            best = max(free, key=lambda b: rows[b]["final_acc"][0])
            margins_free[t] = (s[0] - rows[best]["final_acc"][0], best)
        if "joint" in rows:
            gap = s[0] - rows["joint"]["final_acc"][0]
            lines.append(f"- {t} tasks: `{ours}` is {abs(gap):.2f} points {'above' if gap > 0 else 'below'} "
                         f"`joint` (A_T {s[0]:.2f} vs {rows['joint']['final_acc'][0]:.2f}).")
    for what, margins in (("`seqlora`", {t: (m, None) for t, m in margins_seq.items()}),
                          ("the best training-free baseline", margins_free)):
        if len(margins) >= 2:
            ts = sorted(margins)
            vals = [margins[t][0] for t in ts]
            grows = all(b > a for a, b in zip(vals, vals[1:]))
            detail = ", ".join(f"{t} tasks {margins[t][0]:+.2f}" + (f" (over `{margins[t][1]}`)" if margins[t][1]
                                                                    else "") for t in ts)
            sign = ("" if all(v > 0 for v in vals) else
                    f"; it is negative at every task count, so `{ours}` stays below it" if all(v <= 0 for v in vals)
                    else "; its sign changes with the number of tasks")
            lines.append(f"- `{ours}`'s A_T margin over {what} {'grows' if grows else 'does not grow'} with the "
                         f"number of tasks: {detail}{sign}.")
    return lines


def figure(table: dict[int, dict[str, dict]], path: Path) -> bool:
    """Final accuracy and Ā against the number of tasks, one line per configuration, ±std band."""
    configs = sorted({c for rows in table.values() for c in rows
                      if sum(c in table[t] for t in table) >= 2})
    if not configs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, ("final_acc", "avg_acc")):
        for c in configs:
            ts = [t for t in sorted(table) if c in table[t]]
            mu = [table[t][c][metric][0] for t in ts]
            sd = [table[t][c][metric][1] for t in ts]
            (line,) = ax.plot(ts, mu, marker="o", label=c)
            ax.fill_between(ts, [m - s for m, s in zip(mu, sd)], [m + s for m, s in zip(mu, sd)],
                            color=line.get_color(), alpha=0.15)
        ax.set_xlabel("number of tasks")
        ax.set_ylabel(f"{LABELS[metric]} (%)")
        ax.set_xticks(sorted(table))
        ax.grid(alpha=0.3)
    axes[0].set_title("final accuracy A_T")
    axes[1].set_title("average incremental accuracy Ā")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("xdomain (Fashion-MNIST + MNIST + clip-art, 60 classes): mean ± std over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def summarize(root: Path, docs: Path) -> str:
    table = collect(root)
    val, best, frozen_val = selection(root)
    lines = [
        "Benchmark `xdomain-<T>t` (see docs/xdomain.md), test split, mean ± std over the finished seeds, in %. "
        f"Runs under `{root}`; written by `scripts/xdomain_experiment.py`.",
    ]
    chosen = selected_rows(root, table, best) if best else None
    for t in sorted(table):
        lines += ["", f"### {t} tasks", "", "| configuration | seeds | A_T | Ā | forgetting | plasticity | s/run |",
                  "|---|---|---|---|---|---|---|"]
        for c, row in sorted(table[t].items(), key=lambda kv: -kv[1]["final_acc"][0]):
            cells = " | ".join(f"{row[m][0]:.2f} ± {row[m][1]:.2f}" for m in METRICS)
            lines.append(f"| {c} | {len(row['seeds'])} | {cells} | {row['seconds']:.0f} |")
    if val:
        lines += ["", f"Selection ({SELECT_TASKS} tasks, seed {SELECT_SEED}, validation = 20% of each class's "
                  "training images, test split unused): " + ", ".join(f"`{k}` {v:.2f}" for k, v in val.items())
                  + (f" → `{best}` ({' '.join(GRID[best])})" if best else " (not finished)")
                  + (f"; `frozen` on the same split: {frozen_val:.2f}." if frozen_val is not None else ".")
                  + (f" Its resolved config is `{chosen}`'s, so the `{chosen}` rows above are the selected setting's "
                     "runs." if chosen and chosen != f"sr2lora-{best}" else "")]
    answers = statements(table, "sr2lora")
    if chosen and chosen != "sr2lora":
        answers += statements(table, chosen)
    if answers:
        lines += ["", "Answers (from the finished runs):", *answers]
    docs.mkdir(parents=True, exist_ok=True)
    has_fig = figure(table, docs / "xdomain_experiment.png")
    if has_fig:
        lines += ["", "![A_T and Ā against the number of tasks](xdomain_experiment.png)"]
    text = "\n".join(lines) + "\n"
    (docs / "xdomain_experiment.md").write_text(text)
    summary = {
        "root": str(root),
        "table": {str(t): rows for t, rows in table.items()},
        "selection": {"validation_final_acc": val, "selected": best, "selected_rows": chosen,
                      "frozen_validation_final_acc": frozen_val,
                      "grid": GRID},
    }
    (docs / "xdomain_experiment.json").write_text(json.dumps(summary, indent=2))
    return text


def reports(root: Path, docs: Path) -> None:
    """`sr2lora report` over each task count's runs (tables, curves, gain over frozen) into <out>/report-<T>t;
    its report.md is copied to <docs>/xdomain_reports/report-<T>t.md so that the numbers are in the repo."""
    for t in TASKS:
        folder = root / f"{t}t"
        if folder.is_dir() and any(folder.rglob("results.json")):
            out = root / f"report-{t}t"
            subprocess.run([*sr2lora_cmd(), "report", str(folder), "--out", str(out)],
                           check=False, stdout=subprocess.DEVNULL)
            if (out / "report.md").is_file():
                (docs / "xdomain_reports").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "report.md", docs / "xdomain_reports" / f"report-{t}t.md")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/xdomain", help="runs folder (default runs/xdomain)")
    ap.add_argument("--docs", default="docs", help="where xdomain_experiment.md/.json/.png go (default docs)")
    ap.add_argument("--stage", action="append", choices=["main", "others", "select", "selected"],
                    help="stages to run (repeatable; default all, 'selected' once the selection finished)")
    ap.add_argument("--tasks", default=",".join(map(str, TASKS)), help="task counts, e.g. 10 or 5,20")
    ap.add_argument("--only", default=None, help="comma-separated configuration names to run (e.g. frozen,joint)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds to run (default all)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    ap.add_argument("--precision", default="fp32", help="train.precision of every run (default fp32)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and each run's state; run nothing")
    ap.add_argument("--summarize", action="store_true", help="only write the summary from finished runs")
    args = ap.parse_args()
    root = Path(args.out)
    stages = args.stage or ["main", "others", "select", "selected"]
    tasks = tuple(int(t) for t in args.tasks.split(","))
    if not set(tasks) <= set(TASKS):
        ap.error(f"--tasks: choose among {TASKS}")
    if not args.summarize:
        _, best, _ = selection(root)
        jobs = plan(root, stages, tasks, best)
        if args.only:
            names = set(args.only.split(","))
            jobs = [j for j in jobs if j.config in names]
        if args.seeds:
            seeds = {int(s) for s in args.seeds.split(",")}
            jobs = [j for j in jobs if j.seed in seeds]
        if "selected" in stages and best is None:
            print("note: the selection stage has not finished; the selected setting's runs are not planned yet")
        if args.dry_run:
            for j in jobs:
                print(f"{status(j):9s} {j.stage:8s} {j.preset:12s} seed {j.seed:<4d} {j.config:22s} {j.out}  "
                      f"[{' '.join(j.all_overrides(args.precision))}]")
            counts = {s: sum(status(j) == s for j in jobs) for s in ("done", "resumable", "started", "todo")}
            print(f"{len(jobs)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
            return 0
        run_all(jobs, args.jobs, args.precision)
        if "selected" in stages and best is None and selection(root)[1] is not None:  # selection just finished
            late = [j for j in plan(root, ["selected"], tasks, selection(root)[1])
                    if not args.seeds or j.seed in {int(s) for s in args.seeds.split(",")}]
            run_all(late, args.jobs, args.precision)
    if not args.dry_run:
        reports(root, Path(args.docs))
    print(summarize(root, Path(args.docs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
