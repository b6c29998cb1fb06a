"""`sr2lora demo`: SR²-LoRA beside plain sequential LoRA and the frozen backbone on the offline benchmark.

Runs each method on one preset and seed (default ``clipart-10t``: a pre-trained ViT-S/14 on 40 clip-art
classes in 10 tasks), then prints a side-by-side table and writes a report with figures. A method whose run
folder already holds a finished run of the same experiment is reused and an unfinished one resumed
(:mod:`sr2lora.runs.reuse`), so an interrupted demo continues where it stopped; a folder holding another
experiment is refused, naming what differs. ``--fresh`` reruns everything (same seed → same accuracies).

With ``jobs`` > 1 the methods run as that many single-thread ``sr2lora run`` processes at once. On small CPUs
this is the faster way to use the cores: two threads of one process share a ViT's small matmuls at ~65%
efficiency, two processes at ~100%, and 1-thread and 2-thread runs of a seed give the same accuracies.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .config import load_config
from .core.errors import TrainingError
from .runs.folder import RunFolder
from .runs.reuse import folder_state

DEMO_METHODS = ("sr2lora", "seqlora", "frozen")


def summary_table(results: list[dict]) -> str:
    """A plain-text table of the headline metrics, one row per method."""
    header = f"{'method':<16}{'A_T':>8}{'Ā':>8}{'forget':>9}{'BWT':>8}{'plastic':>9}{'time':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['method']:<16}{r['final_acc']:>8.2f}{r['avg_acc']:>8.2f}{r['forgetting']:>9.2f}{r['bwt']:>8.2f}"
            f"{r['plasticity']:>9.2f}{r['seconds']:>7.0f}s"
        )
    return "\n".join(lines)


def default_jobs() -> int:
    """Parallel single-thread runs: one per core the process may use, at most two (the demo has three runs)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def run_demo(
    preset: str = "clipart-10t",
    out: str | Path = "runs/demo",
    methods: tuple[str, ...] = DEMO_METHODS,
    overrides: list[str] | None = None,
    fresh: bool = False,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Run (or reuse) each method's run under ``out/<method>``, print the table, write ``out/report``.

    The methods are the cells of a small sweep (:mod:`sr2lora.sweep`): with ``jobs`` > 1 they run as that many
    single-thread processes at once (the ``local`` launcher; their output in ``out/logs``), else one after another
    in this process."""
    from .report import write_report
    from .sweep import Cell, Local, Serial, SweepRecord

    out = Path(out)
    start = time.perf_counter()
    cells, todo = [], []
    for i, method in enumerate(methods):
        method_overrides = [*(overrides or []), f"method.name={method}"]
        cfg = load_config(preset, method_overrides)
        run_dir = out / method
        if fresh and RunFolder(run_dir).is_run():  # only a run folder is removed, never someone else's files
            shutil.rmtree(run_dir)
        state = folder_state(run_dir, cfg, hint="add --fresh to rerun every method, or choose another --out")
        cell = Cell(method, preset, method_overrides, run_dir, cfg, {"method.name": method})
        if state == "done":
            print(f"[{i + 1}/{len(methods)}] {method}: reusing the finished run in {run_dir}")
        elif state == "resumable":  # interrupted: continue from its last complete task
            print(f"[{i + 1}/{len(methods)}] {method}: resuming the interrupted run in {run_dir}")
            todo.append(cell)
        else:
            todo.append(cell)
        cells.append(cell)
    run_dirs = [c.out for c in cells]
    if todo:  # the runs only read the cache: build what is missing once, here, before any of them starts
        from .assets import prepare_assets

        prepare_assets(todo[0].cfg)
        record = SweepRecord(out)
        record.plan(cells)
        if jobs > 1 and len(todo) > 1:
            print(f"running {', '.join(c.name for c in todo)} as {min(jobs, len(todo))} single-thread processes at "
                  f"once (sr2lora demo --jobs 1: one after another)", flush=True)
            failed = Local(jobs=jobs, devices=[]).run(todo, record, say=lambda line: print(line, flush=True))
        else:
            failed = Serial(progress=progress).run(todo, record, say=lambda line: print(line, flush=True))
        if failed:
            raise TrainingError(f"demo: these runs failed: {', '.join(failed)} (their output: {out / 'logs'})")
    results = [RunFolder(d).read_results() for d in run_dirs]
    report_dir = out / "report"
    written = write_report(run_dirs, report_dir)
    r0 = results[0]
    print()
    print(f"{preset}, seed {r0['seed']}, {r0['num_tasks']} tasks (accuracies in %); precision "
          f"{'/'.join(sorted({str(r.get('precision')) for r in results}))}, CPU {r0.get('cpu_capability', '?')}")
    print(summary_table(results))
    print()
    print("A_T: final accuracy on all classes; Ā: mean accuracy over the tasks; forget: average forgetting;")
    print("plastic: accuracy on each task right after learning it (a method that does not adapt scores low).")
    print(f"runs: {', '.join(str(d) for d in run_dirs)}")
    print(f"report and figures: {report_dir} ({', '.join(sorted(p.name for p in written))})")
    print(f"demo wall time: {time.perf_counter() - start:.0f}s")
    return report_dir
