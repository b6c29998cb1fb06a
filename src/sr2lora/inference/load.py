"""A finished run as one model over all the classes it learned, ready for inference (``sr2lora.load_run``).

A run folder holds no backbone weights, only the LoRA factors and heads, so :func:`load_run` rebuilds the
backbone exactly as the engine did (:func:`sr2lora.runs.saved.load_model`: ``create_vit`` from the saved config
under the run's backbone seed; for ``model.pretrained=false`` that seeded random init is the backbone, for
pre-trained backbones the weights file or timm's hub cache). The ``backbone_sha256`` the engine stores in the
checkpoint is checked, so a backbone rebuilt differently (another torch/timm version, changed weights) is an
error, not silently wrong predictions.

The model computes in float32, as the run's own evaluation did whatever ``train.precision`` it trained in
(:data:`sr2lora.core.hardware.EVAL_PRECISION`), so on the same machine it gives exactly the accuracies the run
reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..core.hardware import float32_evaluation
from ..models.build import run_transforms
from ..runs.saved import load_classifier, load_model, method_class, read_run


class RunModel(nn.Module):
    """A batch of transformed images (B, 3, H, W) → logits (B, C) over the classes learned up to its task.

    ``head`` is the run's classifier as after that task (:meth:`sr2lora.classifiers.Classifier.head`): the
    per-task heads for ``ca``, the cosine or ridge head otherwise; None = the concatenated heads.
    """

    def __init__(self, cil: nn.Module, lora_tasks: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.cil = cil
        self.lora_tasks = lora_tasks
        self.head = head

    @property
    def num_classes(self) -> int:
        return sum(self.cil.heads.sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with float32_evaluation(x.device):  # as the run's own evaluation (sr2lora.core.hardware.EVAL_PRECISION)
            if self.head is None:
                return self.cil(x, tasks=self.lora_tasks, heads=len(self.cil.heads)).logits
            return self.head(self.cil(x, tasks=self.lora_tasks, logits=False).feature)


@dataclass
class LoadedRun:
    """A finished run ready for inference: ``transform(PIL image)`` → tensor, ``model(batch)`` → logits."""

    model: RunModel  # eval mode; logits in label order (= class_names)
    class_names: list[str]  # label order: results.json class_names, up to the loaded task
    transform: Callable[[Any], torch.Tensor]  # the run's test transform (PIL image → (3, S, S))
    transform_spec: dict[str, Any]  # JSON description of ``transform`` (resize, crop, mean/std)
    config: RunConfig
    results: dict[str, Any]
    run_dir: Path
    task: int  # 0-based: the model is the run's model as after this task
    num_tasks: int


def load_run(run_dir: str | Path, task: int | None = None, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a finished run as one model over all its classes (``task=t``: the model as after task t, 0-based).

    The backbone is rebuilt from the saved config (no network when its weights are local or cached) and checked
    against the checkpoint's hash; LoRA branches 0..t are folded into the qkv weights. ``task=t`` before the
    last task needs the per-task head snapshots (classifier alignment rewrites old heads after every task);
    runs trained before they were saved can only load their final model. Reads the run folder through
    :mod:`sr2lora.runs.folder`: no dataset, no file written; the checkpoint's files are checked against its
    manifest first (a changed weights file would silently change predictions).
    """
    from ..core.hardware import check_device, resolve_device
    from ..data.transforms import transform_spec
    from ..train.evaluation import lora_tasks

    check_device(str(device), "--device")  # before any work: a device this machine lacks is a message
    run_dir = Path(run_dir)
    run = read_run(run_dir, finished=True, verify=True)  # every checkpoint file against its manifest
    cfg, results = run.config, run.results
    num_tasks = int(results["num_tasks"])
    cil = load_model(run, task, "cpu")
    t = run.task if task is None else int(task)  # load_model checked the range
    offsets = [int(o) for o in results["task_offsets"]]
    classifier = load_classifier(run, cil.embed_dim, offsets)
    head = None if classifier.uses_heads else classifier.head(cil.heads, t)
    uses_lora = method_class(run).uses_lora
    model = RunModel(cil, lora_tasks(uses_lora, t), head).eval().to(resolve_device(str(device)))

    d = cfg.data
    mean_std, _, test_tf = run_transforms(cfg, cil.vit)
    return LoadedRun(
        model=model,
        class_names=list(results["class_names"][: offsets[t + 1]]),
        transform=test_tf,
        transform_spec=transform_spec(d.image_size, d.resize_ratio, mean_std),
        config=cfg,
        results=results,
        run_dir=run_dir,
        task=t,
        num_tasks=num_tasks,
    )
