"""What a run folder holds, read and checked, and the model, classifier and method it rebuilds, without training.

:func:`read_run` gives a :class:`SavedRun`: the config, the checkpoint's tensor groups and state (metrics so far,
class order, offsets) and the results; :func:`load_model` rebuilds the model (the frozen backbone exactly as the
engine built it, the LoRA branches and heads from the checkpoint), :func:`load_classifier` and :func:`load_method`
the classifier's statistics and the method's state. None of them builds the dataset, joins a process group or
writes a file, so predict, export and analyses can load a run that lives on a read-only disk, away from its
dataset. Resuming a run (``Trainer.restore``) loads the model state with the same functions.

The checkpoint stores only what training changes (:func:`sr2lora.models.state.stored_weights`). The backbone is
rebuilt from ``config.yaml`` under the run's backbone seed (:func:`sr2lora.models.build.rebuild_model`), and the
``backbone_sha256`` the engine records is checked, so a backbone rebuilt differently (another torch/timm version,
changed weights) is an error rather than silently wrong predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig, load_config
from ..core.errors import CheckpointError
from ..models.build import rebuild_model
from ..models.state import restore_weights
from .checkpoint import load_checkpoint
from .folder import RunFolder

if TYPE_CHECKING:
    from ..classifiers import Classifier
    from ..methods import Method
    from ..models.backbone import CILModel


@dataclass
class SavedRun:
    """What a run folder holds, read and checked, nothing built: see :func:`read_run`."""

    path: Path
    config: RunConfig
    groups: dict[str, dict[str, torch.Tensor]]  # checkpoint tensor groups: model, stats, method, heads
    state: dict[str, Any]  # checkpoint/state.json: task, metrics so far, class order, offsets, hashes
    results: dict[str, Any] | None  # results.json; None while the run is not finished

    @property
    def task(self) -> int:
        """The last task the checkpoint holds (0-based)."""
        return int(self.state["task"])

    @property
    def learned(self) -> int:
        """How many tasks the checkpoint's model has learned."""
        return self.task + 1

    @property
    def offsets(self) -> list[int]:
        """The run's task offsets (label ranges of the tasks), as recorded in the checkpoint or results."""
        if "offsets" in self.state:
            return [int(o) for o in self.state["offsets"]]
        if self.results is not None:
            return [int(o) for o in self.results["task_offsets"]]
        raise CheckpointError(f"{self.path}: the checkpoint records no task offsets (written by an older sr2lora?)")


def read_run(run_dir: str | Path, overrides: Sequence[str] = (), *, finished: bool = True,
             verify: bool = False) -> SavedRun:
    """Read ``run_dir``: its config (with runtime ``overrides`` such as ``train.device=cpu``), checkpoint and results.

    ``finished=True`` (predict, export) requires results.json and a checkpoint of the last task; ``False``
    (analyses) accepts any checkpoint, and ``state`` is then empty when there is none. ``verify`` checks the
    checkpoint's files against its manifest. Errors are CheckpointErrors saying what is missing and what to do.
    """
    folder = RunFolder(run_dir)
    run_dir = folder.path
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    if not folder.is_run():
        raise CheckpointError(f"{run_dir}: not a run folder (no {folder.CONFIG}); train one with `sr2lora run`")
    results = None
    if finished:
        results = folder.read_results()
        for key in ("class_names", "task_offsets", "num_tasks"):
            if key not in results:
                raise CheckpointError(f"{folder.results_file}: has no {key!r} (written by an older sr2lora?); "
                                      f"cannot load the run")
    elif folder.is_finished():
        try:
            results = folder.read_results()
        except CheckpointError:  # an analysis of an unfinished or damaged run still reads the checkpoint
            results = None
    cfg = load_config(str(folder.config_file), list(overrides))
    loaded = load_checkpoint(run_dir, verify=verify)
    if loaded is None:
        if finished:
            raise CheckpointError(
                f"{run_dir}: no checkpoint ({folder.state_file} missing); the run folder is incomplete")
        if folder.swapped_checkpoints():  # a crash mid-swap: only a resume may move it back
            raise CheckpointError(f"{run_dir}: the checkpoint was left mid-write by a crash; `sr2lora run --resume "
                                  f"{run_dir}` puts it back")
        return SavedRun(run_dir, cfg, {}, {}, results)
    groups, state = loaded
    if finished and (int(state.get("task", -1)) != int(results["num_tasks"]) - 1 or "model" not in groups):
        raise CheckpointError(
            f"{run_dir}: the checkpoint holds task {int(state.get('task', -1)) + 1} of {results['num_tasks']}, "
            f"not the finished run; resume it with `sr2lora run --resume {run_dir}`"
        )
    return SavedRun(run_dir, cfg, groups, state, results)


def check_scenario(where: str | Path, state: dict[str, Any], class_order: Sequence[int],
                   offsets: Sequence[int]) -> None:
    """Raise CheckpointError when the checkpoint was written for another class order or task offsets than the
    dataset and scenario now give (e.g. ``data.root`` pointing at another dataset)."""
    for key, ours in (("class_order", class_order), ("offsets", offsets)):
        if key in state and list(state[key]) != list(ours):
            raise CheckpointError(
                f"{where}: the checkpoint was written for another {key} ({state[key]}) than this "
                f"dataset and scenario give ({list(ours)}); is data.root pointing at the same dataset?"
            )


# ---------------------------------------------------------------- what a run folder rebuilds


def method_class(run: SavedRun):
    """The registered Method class of the run (its flags: uses_lora, rewrites_past, ...)."""
    from ..methods import get_method_class

    return get_method_class(run.config.method.name)


def load_model(run: SavedRun, task: int | None = None, device: torch.device | str = "cpu") -> CILModel:
    """The run's model as after ``task`` (0-based; None: the checkpoint's last), on ``device``, in eval mode.

    The backbone is rebuilt (:func:`rebuild_model`) and checked against the checkpoint's hash; LoRA branches
    0..task are loaded and folded. An earlier task than the checkpoint's also needs the heads as they were after
    it (classifier alignment rewrites old heads after every task): the per-task head snapshots, which runs from
    before they were saved lack, and methods that rescale past branches cannot give it at all.
    """
    from ..models.state import backbone_sha256, head_snapshot_keys

    cfg, last = run.config, run.task
    t = last if task is None else int(task)
    if not 0 <= t <= last:
        raise CheckpointError(f"task {task}: out of range; the run has tasks 0..{last} (0-based)")
    if "model" not in run.groups:
        raise CheckpointError(f"{run.path}: the checkpoint has no {RunFolder(run.path).group_file('model').name}; the run folder is incomplete")
    cls = method_class(run)
    if t < last and cls.rewrites_past:
        raise CheckpointError(
            f"task {t}: {cfg.method.name} rescales past tasks' LoRA while later tasks train, so the run "
            f"keeps only the final model (task {last}); the model as after task {t} cannot be rebuilt"
        )
    model = rebuild_model(cfg, cls.uses_lora)
    saved_hash = run.state.get("backbone_sha256")
    if saved_hash is not None and backbone_sha256(model.vit) != saved_hash:
        raise CheckpointError(
            f"{run.path}: the rebuilt backbone {cfg.model.backbone} (model.pretrained={cfg.model.pretrained}) "
            f"differs from the one the run trained (backbone_sha256 mismatch): another torch/timm version changes "
            f"a random init, or the pre-trained weights file changed; use the run's environment"
        )
    offsets = run.offsets
    weights = {}
    for key, value in run.groups["model"].items():
        if key.startswith("heads."):
            s = int(key.split(".")[1])
        elif key.startswith("vit."):
            s = int(key.rsplit(".", 1)[1])  # vit.blocks.i.attn.qkv.{A,B}.s
        else:
            continue
        if s <= t:
            weights[key] = value
    restore_weights(model, weights, [offsets[s + 1] - offsets[s] for s in range(t + 1)], device, run.path)
    if t < last:
        snaps = run.groups.get(RunFolder.HEADS_GROUP, {})
        wk, bk = head_snapshot_keys(t)
        if wk not in snaps or bk not in snaps:
            raise CheckpointError(
                f"{run.path}: the run kept no head snapshot for task {t} (classifier alignment changed the heads "
                f"after it, and runs from before per-task snapshots only hold the final heads); only the final "
                f"model (task {last}) can be loaded"
            )
        if snaps[wk].shape[0] != offsets[t + 1] or snaps[bk].shape[0] != offsets[t + 1]:
            raise CheckpointError(f"{run.path}: the head snapshot of task {t} does not match the run's classes")
        model.heads.load_concatenated(snaps[wk], snaps[bk])
    return model.eval()


def load_classifier(run: SavedRun, embed_dim: int, offsets: Sequence[int] | None = None) -> Classifier:
    """The run's classifier with its saved state (class statistics, ridge solution, ...) from ``stats``."""
    from ..classifiers import create_classifier

    classifier = create_classifier(run.config, embed_dim, list(run.offsets if offsets is None else offsets))
    classifier.load_state_tensors(run.groups.get("stats", {}))
    return classifier


def load_method(run: SavedRun) -> Method:
    """The run's method (options from config.yaml) with the state it carries across tasks (``method``)."""
    from ..methods import create_method

    m = run.config.method
    method = create_method(m.name, m.options, m.weight)
    method.load_state_tensors(run.groups.get("method", {}))
    return method
