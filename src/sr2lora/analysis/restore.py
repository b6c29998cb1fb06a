"""Bringing a finished run back to measure it: ``sr2lora analyze`` (drift from the final checkpoint) and the
evaluation of a run's checkpoint (single process or sharded under torchrun).

:func:`restore_run` reads the run folder through :mod:`sr2lora.runs.folder` (model, classifier and method state,
nothing written) and builds the dataset the run trained on from its config, explicitly, since these analyses
measure on its images. The drift measures themselves live in :mod:`sr2lora.analysis.drift`, which the engine also
uses during training; both compute through :mod:`sr2lora.train.evaluation`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core import distributed as ddp
from ..core.hardware import resolve_device
from ..data.run_data import prepare_data
from ..models.build import run_transforms
from ..runs.folder import RunFolder
from ..runs.saved import check_scenario, load_classifier, load_method, load_model, method_class, read_run

if TYPE_CHECKING:
    from ..classifiers import Classifier
    from ..config import RunConfig
    from ..data.run_data import RunData
    from ..data.scenario import Scenario
    from ..methods import Method
    from ..models.backbone import CILModel
    from ..runs.saved import SavedRun


@dataclass
class AnalysisRun:
    """A run's last checkpoint with the data it trained on, for offline measures (read-only by convention).

    It has the attributes evaluation reads of a trainer (:class:`sr2lora.train.evaluation.RunView`), so the drift
    tracker and the evaluation compute on it exactly as they did during training.
    """

    run: SavedRun
    cfg: RunConfig
    data: RunData
    scenario: Scenario
    model: CILModel  # the model after the checkpoint's last task, every LoRA branch folded, eval mode
    method: Method
    classifier: Classifier
    device: torch.device
    train_tf: Callable[[Any], torch.Tensor]
    test_tf: Callable[[Any], torch.Tensor]
    dist: ddp.DistContext
    bars: bool = False


def restore_run(run_dir: str | Path, device: str | None = None) -> tuple[AnalysisRun, int]:
    """(the run's final checkpoint with its data, number of tasks it has learned) for offline analyses.

    Writes nothing and joins no process group (a caller under torchrun joins it first, as
    :func:`evaluate_run` does). The checkpoint must still match the run: config.yaml unchanged, the same
    dataset (identity, class order, task offsets) as ``data.*`` now gives. Raises FileNotFoundError when
    ``run_dir`` has no config.yaml or no checkpoint.
    """
    from ..data.identity import check_same_dataset, dataset_identity
    from ..runs.checkpoint import check_config_unchanged

    folder = RunFolder(run_dir)
    run_dir = folder.path
    if device is not None:
        from ..core.hardware import check_device

        check_device(device, "--device")
    if not folder.is_run():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no {folder.CONFIG})")
    run = read_run(run_dir, [f"train.device={device}"] if device else [], finished=False, verify=True)
    if not run.state:
        raise FileNotFoundError(f"{run_dir}: no checkpoint (the run has not finished a task)")
    cfg = run.config
    check_config_unchanged(run_dir, run.state)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dist = ddp.current()
    dev = ddp.resolve_device(resolve_device(cfg.train.device), dist)
    # the measures need the run's images: the dataset, built from the config
    data = prepare_data(cfg, single_task=method_class(run).single_task)
    check_same_dataset(run_dir, run.state.get("dataset"), dataset_identity(cfg.data.dataset, data.bundle,
                                                                           cfg.data.root, data), trained=run.task)
    check_scenario(run_dir, run.state, data.scenario.class_order, data.scenario.offsets)
    model = load_model(run, device=dev)
    if cfg.train.compile:
        model.compile_backbone()
    _, train_tf, test_tf = run_transforms(cfg, model.vit)
    restored = AnalysisRun(
        run=run, cfg=cfg, data=data, scenario=data.scenario, model=model, method=load_method(run),
        classifier=load_classifier(run, model.embed_dim, data.scenario.offsets), device=dev,
        train_tf=train_tf, test_tf=test_tf, dist=dist,
    )
    return restored, run.learned


def evaluate_run(run_dir: str, out_json: str | None = None) -> dict:
    """Load a finished run's last checkpoint and evaluate it (sharded when started by torchrun).

    Returns ``{"world_size", "task", "row", "overall", "counts", "predictions"}``: per-task accuracies after
    the last task. Every rank computes the same numbers; rank 0 writes them to ``out_json`` when given. Used
    to check that distributed evaluation equals the single-process one exactly.
    """
    from ..config import load_config
    from ..train.evaluation import predict_eval
    from ..train.metrics import task_accuracies

    run = Path(run_dir)
    cfg = load_config(str(RunFolder(run).config_file))
    # the one offline step that runs sharded: join torchrun's process group (a no-op for one process)
    ctx = ddp.init_from_env(resolve_device(cfg.train.device))
    ddp.barrier(ctx)
    try:
        restored, learned = restore_run(run)  # reads the checkpoint; nothing is written
    except FileNotFoundError as exc:
        raise RuntimeError(f"{run}: no checkpoint to evaluate") from exc
    t = learned - 1
    pred, y = predict_eval(restored, t)
    row, overall, counts = task_accuracies(pred == y, restored.scenario.task_of_labels(y), t + 1)
    result = {"world_size": ctx.world_size, "task": t, "row": row, "overall": overall, "counts": counts,
              "predictions": pred.tolist()}
    if out_json and ctx.is_main:
        Path(out_json).write_text(json.dumps(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``[torchrun ...] python -m sr2lora.analysis.restore evaluate RUN_DIR [OUT_JSON]``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "evaluate":
        print("usage: python -m sr2lora.analysis.restore evaluate RUN_DIR [OUT_JSON]", file=sys.stderr)
        return 2
    r = evaluate_run(args[1], args[2] if len(args) > 2 else None)
    if ddp.current().is_main:
        print(f"world size {r['world_size']}: accuracy {r['overall']:.2f}% per task {r['row']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
