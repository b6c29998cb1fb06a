"""`sr2lora demo`: SR²-LoRA beside plain sequential LoRA and the frozen backbone on the offline benchmark.

Runs each method on one preset and seed (default ``clipart-10t``: a pre-trained ViT-S/14 on 40 clip-art
classes in 10 tasks), then prints a side-by-side table and writes a report with figures. A method whose run
folder already holds a finished run with the same config is reused, so an interrupted demo continues where it
stopped; ``--fresh`` reruns everything (same seed → same accuracies).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .config import RunConfig, load_config

DEMO_METHODS = ("sr2lora", "seqlora", "frozen")


def _same_config(run_dir: Path, cfg: RunConfig) -> bool:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return False
    return load_config(str(saved)).to_dict() == cfg.to_dict()


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


def run_demo(
    preset: str = "clipart-10t",
    out: str | Path = "runs/demo",
    methods: tuple[str, ...] = DEMO_METHODS,
    overrides: list[str] | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> Path:
    """Run (or reuse) each method's run under ``out/<method>``, print the table, write ``out/report``."""
    from .engine import Trainer
    from .report import write_report

    out = Path(out)
    start = time.perf_counter()
    run_dirs, results = [], []
    for i, method in enumerate(methods):
        cfg = load_config(preset, [*(overrides or []), f"method.name={method}"])
        run_dir = out / method
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        if (run_dir / "results.json").is_file() and _same_config(run_dir, cfg):
            print(f"[{i + 1}/{len(methods)}] {method}: reusing the finished run in {run_dir}")
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            print(f"[{i + 1}/{len(methods)}] {method} on {preset} (seed {cfg.seed}) -> {run_dir}", flush=True)
            Trainer(cfg, run_dir, progress=progress).run()
        results.append(json.loads((run_dir / "results.json").read_text()))
        run_dirs.append(run_dir)
    report_dir = out / "report"
    written = write_report(run_dirs, report_dir)
    print()
    print(f"{preset}, seed {results[0]['seed']}, {results[0]['num_tasks']} tasks (accuracies in %)")
    print(summary_table(results))
    print()
    print("A_T: final accuracy on all classes; Ā: mean accuracy over the tasks; forget: average forgetting;")
    print("plastic: accuracy on each task right after learning it (a method that does not adapt scores low).")
    print(f"runs: {', '.join(str(d) for d in run_dirs)}")
    print(f"report and figures: {report_dir} ({', '.join(sorted(p.name for p in written))})")
    print(f"demo wall time: {time.perf_counter() - start:.0f}s")
    return report_dir
