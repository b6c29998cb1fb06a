"""Running a trained model over a dataset split: the pieces the trainer and the offline analyses share.

The trainer evaluates after every task; ``sr2lora analyze``, the robustness check and the (distributed)
evaluation of a run's checkpoint measure a run restored from its folder. Both are seen through the same
read-only attributes (:class:`RunView`: a :class:`~sr2lora.train.engine.Trainer` has them, and so does
:class:`sr2lora.analysis.restore.AnalysisRun`) and compute with these functions: the loader of an evaluation split, the
number of LoRA branches of the model after a task, and the batches sharded over processes. A number measured
offline is therefore computed exactly as training computed it.

Evaluation always computes in float32, whatever ``train.precision`` trained in
(:data:`sr2lora.core.hardware.EVAL_PRECISION`): the reported accuracies are then those a reloaded or exported model
gives, which also compute in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core import distributed as ddp
from ..core.hardware import float32_evaluation
from ..core.signals import check_interrupt
from ..data.loaders import seeded_loader
from ..data.scenario import TaskView, label_range_indices

if TYPE_CHECKING:
    from ..classifiers import Classifier
    from ..config import RunConfig
    from ..data.run_data import RunData
    from ..data.scenario import Scenario
    from ..methods import Method
    from ..models.backbone import CILModel


class RunView(Protocol):
    """What evaluation reads of a run (never writes): its config, data, model, method, classifier and where it
    computes (always in float32)."""

    cfg: RunConfig
    data: RunData
    scenario: Scenario
    model: CILModel
    method: Method
    classifier: Classifier
    device: torch.device
    test_tf: Callable[[Any], torch.Tensor]
    dist: ddp.DistContext
    bars: bool  # progress bars over the batches


def lora_tasks(uses_lora: bool, t: int) -> int:
    """How many LoRA branches the model after task ``t`` (0-based) runs: t + 1, or 0 for a method without LoRA."""
    return t + 1 if uses_lora else 0


def task_indices(labels: np.ndarray, base: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The items of ``base`` (indices into ``labels``, the run labels) whose label lies in [lo, hi)."""
    return base[label_range_indices(labels[base], lo, hi)]


def eval_loader(view: RunView, images, labels: np.ndarray, indices: np.ndarray) -> DataLoader:
    """This process's loader over ``images[indices]`` in order, with the test transform and the eval batch size."""
    return seeded_loader(TaskView(images, labels, indices, view.test_tf), view.cfg.train.eval_batch_size, False, 0,
                         view.cfg.data.num_workers, view.device.type == "cuda")


@torch.no_grad()
def over_batches(view: RunView, images, labels: np.ndarray, indices: np.ndarray, desc: str,
                 forward: Callable[[torch.Tensor], torch.Tensor], empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``forward(x)`` of every batch, run labels) over ``images[indices]`` with the test transform, in order,
    in float32 (no autocast: the evaluation policy of :mod:`sr2lora.core.hardware`).

    With several processes each computes its share of the batches and all get the whole, in order.
    ``forward`` returns a CPU tensor per batch; ``empty`` is its zero-row shape for a rank with no batch.
    """
    bs = view.cfg.train.eval_batch_size
    mine = ddp.shard_batches(indices, bs, view.dist)
    loader = eval_loader(view, images, labels, mine)
    outs, ys = [empty], [torch.zeros(0, dtype=torch.int64)]
    view.model.eval()
    for x, y, _ in tqdm(loader, desc=desc, disable=not view.bars, leave=False):
        check_interrupt()
        with float32_evaluation(view.device):
            outs.append(forward(x.to(view.device)))
        ys.append(y.to(torch.int64))
    n = len(indices)
    out = ddp.gather_batches(torch.cat(outs), n, bs, view.dist)
    return out, ddp.gather_batches(torch.cat(ys), n, bs, view.dist)


def predict_eval(view: RunView, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted run labels, true run labels) on the evaluation items of classes seen after task ``t``."""
    data, model = view.data, view.model
    idx = task_indices(data.eval_labels, data.eval_index, 0, view.scenario.seen_classes(t))
    tasks = lora_tasks(view.method.uses_lora, t)
    pred, y = over_batches(
        view, data.eval_images, data.eval_labels, idx, "evaluate",
        lambda x: view.classifier.logits(model(x, tasks=tasks, logits=False).feature, model.heads, t)
        .float().argmax(-1).cpu(),
        torch.zeros(0, dtype=torch.int64),
    )
    return pred.numpy(), y.numpy()
