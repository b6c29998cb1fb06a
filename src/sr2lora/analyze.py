"""Bringing a finished run back to measure it: ``sr2lora analyze`` (drift from the final checkpoint) and the
evaluation of a run's checkpoint (single process or sharded under torchrun).

These build a :class:`~sr2lora.engine.Trainer` from the run folder, so they sit above the engine; the drift
measures themselves live in :mod:`sr2lora.analysis`, which the engine uses during training.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .analysis import SCHEMA, load_drift, read_head_snapshots, trainer_tracker
from .drift_margin import drift_margin_summary
from .engine import Trainer


def restore_run(run_dir: str | Path, device: str | None = None) -> tuple[Trainer, int]:
    """(trainer holding the run's final checkpoint, number of tasks it has learned) for offline analyses.

    Raises FileNotFoundError when ``run_dir`` has no config.yaml or no checkpoint.
    """
    from .config import load_config

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(str(cfg_file), [f"train.device={device}"] if device else [])
    trainer = Trainer(cfg, run_dir, progress=False)
    learned = trainer.restore()
    if learned == 0:
        raise FileNotFoundError(f"{run_dir}: no checkpoint (the run has not finished a task)")
    return trainer, learned


def analyze_run(run_dir: str | Path, samples_per_task: int | None = None, seed: int | None = None,
                device: str | None = None) -> dict[str, Any]:
    """Recompute the drift measures of a run from its final checkpoint (no training); returns drift.json's dict.

    Models after earlier tasks are exact (``tasks=s+1``); margins use the per-task head snapshots the checkpoint
    holds (runs from before the snapshots existed fall back to the final heads, with a warning and
    ``"heads": "final"`` in the result).
    """
    run_dir = Path(run_dir)
    trainer, learned = restore_run(run_dir, device)
    cfg = trainer.cfg
    n = samples_per_task if samples_per_task is not None else cfg.analysis.samples_per_task
    s = seed if seed is not None else cfg.analysis.seed
    if n <= 0:
        raise ValueError(f"--samples: must be positive, got {n}")
    tracker = trainer_tracker(trainer, n, s, "checkpoint", heads=read_head_snapshots(run_dir))
    for t in range(learned):
        tracker.step(t)
    doc = tracker.to_json()
    missing = tracker.heads_missing
    doc["heads"] = "final" if missing else "per-task snapshots"
    if missing:
        warnings.warn(f"{run_dir}: the checkpoint has no per-task head snapshots; margins use the final heads",
                      stacklevel=2)
    doc["run"] = str(run_dir)
    doc["drift_margin"] = drift_margin_summary([doc])
    return doc


def analyze_or_reuse(run_dir: str | Path, samples_per_task: int | None = None, seed: int | None = None,
                     device: str | None = None, recompute: bool = False) -> tuple[dict[str, Any], bool]:
    """(drift document, reused?) for ``sr2lora analyze``: RUN/drift.json when it already covers every task with
    the same sample (written during training or by an earlier call), else :func:`analyze_run`, saved there."""
    from .checkpoint import write_json_atomic
    from .config import load_config

    run_dir = Path(run_dir)
    path = run_dir / "drift.json"
    if path.is_file() and not recompute and (run_dir / "config.yaml").is_file():
        a = load_config(str(run_dir / "config.yaml")).analysis
        want_n = samples_per_task if samples_per_task is not None else a.samples_per_task
        want_seed = seed if seed is not None else a.seed
        try:
            doc = load_drift(path)
            results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc, results = {}, {}
        if (doc.get("schema") == SCHEMA and doc.get("samples_per_task") == want_n
                and doc.get("sample_seed") == want_seed and doc.get("tasks_analyzed") == results.get("num_tasks")):
            if "drift_margin" not in doc or "run" not in doc:  # written before these keys existed
                doc["run"] = str(run_dir)
                doc["drift_margin"] = drift_margin_summary([doc])
                write_json_atomic(path, doc)
            return doc, True
    doc = analyze_run(run_dir, samples_per_task, seed, device)
    write_json_atomic(path, doc)
    return doc, False


def evaluate_run(run_dir: str, out_json: str | None = None) -> dict:
    """Load a finished run's last checkpoint and evaluate it (sharded when started by torchrun).

    Returns ``{"world_size", "task", "row", "overall", "counts", "predictions"}``: per-task accuracies after
    the last task. Every rank computes the same numbers; rank 0 writes them to ``out_json`` when given. Used
    to check that distributed evaluation equals the single-process one exactly.
    """
    from .config import load_config
    from .distributed import current
    from .metrics import task_accuracies

    run = Path(run_dir)
    cfg = load_config(str(run / "config.yaml"))
    trainer = Trainer(cfg, run, progress=False)
    t = trainer.restore() - 1  # reads the checkpoint; nothing is written
    if t < 0:
        raise RuntimeError(f"{run}: no checkpoint to evaluate")
    pred, y = trainer.predict_eval(t)
    row, overall, counts = task_accuracies(pred == y, trainer.scenario.task_of_labels(y), t + 1)
    ctx = current()
    result = {"world_size": ctx.world_size, "task": t, "row": row, "overall": overall, "counts": counts,
              "predictions": pred.tolist()}
    if out_json and ctx.is_main:
        Path(out_json).write_text(json.dumps(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``[torchrun ...] python -m sr2lora.analyze evaluate RUN_DIR [OUT_JSON]``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "evaluate":
        print("usage: python -m sr2lora.analyze evaluate RUN_DIR [OUT_JSON]", file=sys.stderr)
        return 2
    r = evaluate_run(args[1], args[2] if len(args) > 2 else None)
    from .distributed import current

    if current().is_main:
        print(f"world size {r['world_size']}: accuracy {r['overall']:.2f}% per task {r['row']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
