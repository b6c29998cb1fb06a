"""The task loop: train a task, fold its LoRA, class statistics, classifier alignment, evaluation, checkpoint.

The engine never knows which method it runs: it asks the method for its trainable parameters, its extra loss
and its hooks (see :mod:`sr2lora.methods.base`). All randomness of task t is seeded from (seed, t), so a run
resumed from the checkpoint of task t−1 is identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from . import __version__, hardware
from . import distributed as ddp
from .alignment import ClassGaussians
from .cache import file_sha256
from .callbacks import Callback, CSVLog, TensorBoardLog
from .checkpoint import (
    check_config_unchanged,
    clean_partial,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from .classifiers import create_classifier
from .config import RunConfig, dump_config
from .data import build_dataset
from .data.base import DatasetBundle
from .data.integrity import drop_unreadable
from .data.scenario import Scenario, TaskView, build_scenario
from .data.splits import rng_stream_order, stratified_split
from .data.transforms import transform_spec
from .errors import TrainingError
from .evaluation import lora_tasks, over_batches, predict_eval, task_indices
from .loaders import seeded_loader, train_loader
from .losses import logitnorm_cross_entropy
from .methods import Method, TaskContext, create_method, get_method_class
from .metrics import AccuracyTracker, task_accuracies
from .models.backbone import CILModel
from .optim import build_optimizer
from .preflight import preflight
from .run_dir import build_model, check_scenario, restore_weights, run_transforms, stored_weights
from .schedules import lr_at
from .seeding import task_seed
from .signals import check_interrupt

# |logit| of a class mean above this means the head's weights blew up (a converged head's logits are O(10)).
DIVERGED_LOGIT = 1e6


def check_finite_after(stage: str, t: int, tensors: dict[str, torch.Tensor], fix: str) -> None:
    """Raise TrainingError when a stage left a NaN/inf in ``tensors`` (name -> tensor), naming the stage, the
    first offending tensors and ``fix`` (the setting to change): a diverged stage must stop the run rather
    than let it finish with a result it knows to be wrong."""
    bad = [name for name, v in tensors.items() if v.numel() and not bool(torch.isfinite(v.detach()).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise TrainingError(
            f"task {t + 1}: {stage} produced non-finite values (NaN/inf) in {', '.join(bad[:5])}{more}; {fix}. "
            f"The last complete task's checkpoint is kept."
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunData:
    """A built dataset seen through the run's scenario: run labels and which items train / evaluate."""

    bundle: DatasetBundle
    scenario: Scenario
    train_labels: np.ndarray
    eval_labels: np.ndarray
    train_index: np.ndarray
    eval_index: np.ndarray
    eval_split: str  # "test" or "val"
    skipped_files: list[str] = field(default_factory=list)  # unreadable files dropped (data.skip_bad)

    @property
    def eval_images(self):
        return self.bundle.train if self.eval_split == "val" else self.bundle.test


def prepare_data(cfg: RunConfig) -> RunData:
    """Build the dataset and scenario; with ``data.val_fraction`` > 0, evaluate on a split carved from train."""
    bundle = build_dataset(cfg.data)
    sc_cfg = cfg.scenario
    if get_method_class(cfg.method.name).single_task:  # `joint`: one task holding every class, same order
        sc_cfg = dataclasses.replace(sc_cfg, init_cls=bundle.num_classes, increment=1)
    scenario = build_scenario(bundle.num_classes, sc_cfg, cfg.seed)
    bundle, skipped = drop_unreadable(bundle, cfg.data.skip_bad)  # every file opened once, before the model
    train_labels = scenario.remap(bundle.train.targets)
    if cfg.data.val_fraction > 0:
        held = stratified_split(train_labels, cfg.data.val_fraction, rng_stream_order(cfg.data.split_seed),
                                field="data.val_fraction")
        train_index, eval_index = np.flatnonzero(~held), np.flatnonzero(held)
        return RunData(bundle, scenario, train_labels, train_labels, train_index, eval_index, "val", skipped)
    test_labels = scenario.remap(bundle.test.targets)
    return RunData(
        bundle, scenario, train_labels, test_labels, np.arange(len(train_labels)), np.arange(len(test_labels)),
        "test", skipped,
    )


def training_step(
    model: CILModel,
    method: Method,
    ctx: TaskContext,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    offset: int,
    *,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    autocast: Callable[[], AbstractContextManager] | None = None,
    check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], None] | None = None,
    grad_sync: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One optimisation step of task ``ctx.task`` on (x, y): the step training runs (and the benchmarks time).

    The frozen stem once; when the method needs it, the previous model (branches 0..t−1) without autograd, run
    first so that its working memory is freed before the current model's activations are held; the current
    model (branches 0..t) from the same tokens; the task-local loss plus ``method.weight`` × the method's
    regulariser, ``check(loss, ce, reg)`` (may raise), backward, ``grad_sync()`` (the distributed all-reduce),
    optimiser step. (The reference's way, the previous model after the current one with autograd on, lives in
    ``benchmarks/step.py``, which times the two against each other.)
    Returns (loss, ce, reg), detached.
    """
    t = ctx.task
    use_old = method.needs_old and t > 0
    with autocast() if autocast is not None else nullcontext():
        tokens = model.embed(x)  # the frozen stem, shared by both forwards
        old = None
        if use_old:  # first, while no activations are held: its working memory adds nothing
            with torch.no_grad():
                old = model(x, tasks=t, layers=method.needs_layers, logits=False, tokens=tokens)
        new = model(x, tasks=t + 1 if method.uses_lora else 0, heads=t + 1, layers=method.needs_layers,
                    logits=False, tokens=tokens)
        logits = model.heads.head_logits(new.feature, t)
        target = y - offset
        ce = task_loss(logits, target) if task_loss is not None else F.cross_entropy(logits.float(), target)
        reg = method.regularizer(new, old, ctx)
    loss = ce if reg is None else ce + method.weight * reg
    if check is not None:
        check(loss, ce, reg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_sync is not None:
        grad_sync()
    opt.step()
    return loss.detach(), ce.detach(), None if reg is None else reg.detach()


class Trainer:
    """Runs one class-incremental experiment described by a :class:`RunConfig` into ``out_dir``."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        self.extra_callbacks = list(callbacks)  # loggers of the caller's, beside the run folder's own
        self.out_dir = Path(out_dir) if out_dir else None
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        preflight(cfg, self.out_dir)  # cheap checks (scenario, paths, output folder) before any work
        # torchrun: join the process group (after every rank's preflight, before rank 0 writes anything)
        self.dist = ddp.init_from_env(self.device)
        ddp.barrier(self.dist)
        self.device = ddp.resolve_device(self.device, self.dist)
        self.progress = progress and self.dist.is_main
        # progress bars only on a terminal; a log file or a pipe gets the per-task lines alone
        self.bars = self.progress and sys.stderr.isatty()
        # bf16 only where the device computes it natively (sr2lora.hardware); decided once, recorded in results
        self.capabilities = hardware.probe(self.device)
        self.precision = hardware.choose_precision(cfg.train.precision, self.capabilities)
        if self.progress:
            tqdm.write(hardware.summary_line(self.capabilities, self.precision, cfg.train.precision,
                                             torch.get_num_threads()))
        self.data = prepare_data(cfg)
        self.scenario = self.data.scenario
        self.method = create_method(cfg.method.name, cfg.method.options, cfg.method.weight)
        torch.manual_seed(task_seed(cfg.seed, -1))
        self.model = build_model(cfg, self.method.uses_lora).to(self.device)
        if cfg.train.compile:
            self.model.compile_backbone()
        self.mean_std, self.train_tf, self.test_tf = run_transforms(cfg, self.model.vit)
        # what predicts (classifier.kind or the method's own; sr2lora.classifiers): the engine only calls its
        # interface; `gaussians` are the class statistics it keeps (empty for classifiers without any)
        self.classifier = create_classifier(cfg, self.model.embed_dim, self.scenario.offsets)
        self.gaussians = getattr(self.classifier, "gaussians", None)
        if self.gaussians is None:
            self.gaussians = ClassGaussians(self.model.embed_dim)
        self.tracker = AccuracyTracker(self.scenario.num_tasks)
        self.task_seconds: list[float] = []
        self.start_task = 0
        self.csv_rows: list[dict] = []
        self.task_precision: list[str] = []  # per task: a resumed run may have computed elsewhere
        # what the reported accuracies were computed in: float32, unless a checkpoint from before that policy
        # evaluated its tasks in bf16 (then "mixed")
        self.eval_precision = hardware.EVAL_PRECISION
        self.callbacks: list[Callback] = []  # set by run(): see _open_logs

    # ------------------------------------------------------------------ one task
    def _autocast(self) -> AbstractContextManager:
        """Training's autocast; evaluation and statistics compute in float32 (sr2lora.hardware.EVAL_PRECISION)."""
        return hardware.autocast(self.device, self.precision)

    def _task_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.cfg.train.loss == "logitnorm":
            return logitnorm_cross_entropy(logits, targets, self.cfg.train.logitnorm_tau)
        return F.cross_entropy(logits.float(), targets)

    def train_task(self, t: int) -> None:
        """Train task ``t``: the method's hooks around ``train.epochs`` epochs of :meth:`train_epoch`."""
        cfg, tc, model, method = self.cfg, self.cfg.train, self.model, self.method
        lo, hi = self.scenario.offsets[t], self.scenario.offsets[t + 1]
        idx = task_indices(self.data.train_labels, self.data.train_index, lo, hi)
        view = TaskView(self.data.bundle.train, self.data.train_labels, idx, self.train_tf)
        seed, workers, pin = task_seed(cfg.seed, t, 1), cfg.data.num_workers, self.device.type == "cuda"
        loader, sampler = train_loader(view, tc.batch_size, seed, self.dist, workers, pin)
        # hooks see the whole task: on one process the training loader itself, with several beside a rank's share
        whole = loader if sampler is None else seeded_loader(view, tc.batch_size, True, seed, workers, pin)
        ctx = TaskContext(task=t, model=model, loader=whole, device=self.device, num_tasks=self.scenario.num_tasks)
        method.before_task(ctx)
        params = self._set_trainable(method.trainable_parameters(ctx))
        opt = build_optimizer(params, tc)
        grad_sync = (lambda: ddp.all_reduce_grads(params, self.dist)) if self.dist.enabled else None
        if self.dist.enabled:  # independent augmentations on each rank
            torch.manual_seed(task_seed(cfg.seed, t, 3) + self.dist.rank)
        model.train()
        step, total_steps = 0, tc.epochs * len(loader)
        for epoch in range(tc.epochs if method.trains_task(t) else 0):  # training-free tasks: no epoch
            row = self.train_epoch(ctx, loader, opt, epoch, step, total_steps, sampler=sampler, grad_sync=grad_sync)
            step = row["steps"]
            self.csv_rows.append(row)
            for cb in self.callbacks:
                cb.on_epoch(row, len(self.csv_rows) - 1)
        for p in params:
            p.requires_grad_(False)
        if self.dist.enabled:  # identical already (same start, averaged gradients); make it bit-exact
            ddp.broadcast_(params, self.dist)
            torch.manual_seed(task_seed(cfg.seed, t, 4))  # the same random state on every rank for the hook
        model.eval()
        model.fold()
        method.after_task(ctx)

    def _set_trainable(self, params: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """Freeze the whole model, then unfreeze those of ``params`` that require grad; returns them."""
        params = [p for p in params if p.requires_grad]
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        return params

    def train_epoch(
        self, ctx: TaskContext, loader: DataLoader, opt: torch.optim.Optimizer, epoch: int, step: int,
        total_steps: int, *, sampler: DistributedSampler | None = None, grad_sync: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One epoch of task ``ctx.task`` over ``loader``: returns its metrics.csv row.

        ``step`` counts the task's steps before this epoch (the row's ``steps`` is the count after it) and
        ``total_steps`` those of the whole task, for per-step schedules. Each step sets the schedule's lr, runs
        :func:`training_step` (a non-finite loss stops the run) and adds to the epoch's sums; with several
        processes the row's means are over every rank's samples.
        """
        t, tc = ctx.task, self.cfg.train
        if sampler is not None:
            sampler.set_epoch(epoch)
        # the epoch's lr (a per-step schedule sets it again before every step)
        lr = lr_at(tc.schedule, tc.lr, epoch, tc.epochs, step, total_steps, tc.warmup_steps)
        sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0}
        seen = 0
        bar = tqdm(loader, desc=f"task {t + 1}/{ctx.num_tasks} epoch {epoch + 1}/{tc.epochs}",
                   disable=not self.bars, leave=False, dynamic_ncols=True)
        for x, y, item in bar:
            check_interrupt()  # SIGINT/SIGTERM: stop between steps
            lr = lr_at(tc.schedule, tc.lr, epoch, tc.epochs, step, total_steps, tc.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(self.device, non_blocking=True), y.to(self.device)
            loss, ce, reg = training_step(
                self.model, self.method, ctx, opt, x, y, self.scenario.offsets[t], task_loss=self._task_loss,
                autocast=self._autocast, check=self._loss_check(t, epoch, step, item), grad_sync=grad_sync,
            )
            step += 1
            n = len(y)
            seen += n
            sums["loss"] += loss.item() * n
            sums["ce"] += ce.item() * n
            sums["reg"] += (0.0 if reg is None else reg.item()) * n
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", ce=f"{sums['ce'] / seen:.3f}",
                            reg=f"{sums['reg'] / seen:.3g}")
        if self.dist.enabled:  # epoch means over every rank's samples
            *totals, seen = ddp.all_reduce_sum([*sums.values(), seen], self.dist)
            sums, seen = dict(zip(sums, totals)), int(seen)
        return {"task": t, "epoch": epoch, "lr": lr, "steps": step, **{k: v / max(seen, 1) for k, v in sums.items()}}

    def _loss_check(self, t: int, epoch: int, step: int, item: torch.Tensor) -> Callable[..., None]:
        """training_step's check of one step: a non-finite loss raises TrainingError naming the step and the
        batch's first files (``item``: their dataset indices)."""

        def check(loss: torch.Tensor, ce: torch.Tensor, reg: torch.Tensor | None) -> None:
            if not torch.isfinite(loss):
                files = [self.data.bundle.train.describe(int(i)) for i in item[:8]]
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at task {t + 1}, epoch {epoch + 1}, step {step}: "
                    f"ce={ce.item():.4g}, reg={None if reg is None else reg.item()}; first files of the "
                    f"batch: {files}. Lower train.lr or method.weight, or check these images."
                )

        return check

    # ------------------------------------------------------------------ statistics, alignment, evaluation
    def extract(self, images, labels, indices, tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Final features (test transform) and run labels of ``images[indices]`` with ``tasks`` branches."""
        return over_batches(
            self, images, labels, indices, "features",
            lambda x: self.model(x, tasks=tasks, logits=False).feature.float().cpu(),
            torch.zeros(0, self.model.embed_dim),
        )

    def compute_statistics(self, t: int) -> None:
        lo, hi = self.scenario.offsets[t], self.scenario.offsets[t + 1]
        idx = task_indices(self.data.train_labels, self.data.train_index, lo, hi)
        feats, ys = self.extract(self.data.bundle.train, self.data.train_labels, idx, lora_tasks(self.method.uses_lora, t))
        bad = (~torch.isfinite(feats).all(dim=1)).nonzero().flatten().tolist()
        if bad:  # training diverged without a non-finite loss (e.g. a single huge step)
            files = [self.data.bundle.train.describe(int(idx[i])) for i in bad[:8]]
            raise TrainingError(
                f"task {t + 1}: the trained model gives non-finite features for {len(bad)} of {len(idx)} training "
                f"images (first: {files}); training diverged. Lower train.lr or method.weight, or check these images."
            )
        names = [self.data.bundle.class_names[c] for c in self.scenario.class_order]  # by run label
        self.classifier.fit_task(t, feats, ys, list(range(lo, hi)), class_names=names)

    def align(self, t: int) -> None:
        """Let the classifier finish task t (classifier alignment of the heads, a ridge solve, ...)."""
        heads = self.model.heads
        self.classifier.finish_task(t, heads, task_seed(self.cfg.seed, t, 2), single_task=self.method.single_task)
        # every rank aligned the same statistics with the same seed; make the heads bit-exact
        if self.dist.enabled and self.classifier.uses_heads:
            ddp.broadcast_([p for h in list(heads)[: t + 1] for p in h.parameters()], self.dist)

    def _check_statistics(self, t: int) -> None:
        """The new classes' means and Cholesky factors must be finite before alignment samples from them."""
        g = self.gaussians
        new = [c for c in range(self.scenario.offsets[t], self.scenario.offsets[t + 1]) if c in g.means]
        check_finite_after("the class statistics", t, {
            **{f"mean of class {c}": g.means[c] for c in new}, **{f"covariance of class {c}": g.chols[c] for c in new}
        }, f"raise ca.cov_shrink (now {self.cfg.ca.cov_shrink}) or lower train.lr (now {self.cfg.train.lr})")

    def _check_heads(self, t: int) -> None:
        """The heads used for evaluation must be finite and give sane logits on the class means: classifier
        alignment can diverge (ca.lr, ca.tau) into NaN, or into huge but finite weights at chance accuracy."""
        ca = self.cfg.ca
        fix = f"lower ca.lr (now {ca.lr}) or raise ca.tau (now {ca.tau}), or set ca.enabled=false"
        w, b = (x.detach().float().cpu() for x in self.model.heads.concatenated(t + 1))
        check_finite_after("classifier alignment", t, {"head weights": w, "head biases": b}, fix)
        seen = [c for c in range(self.scenario.seen_classes(t)) if c in self.gaussians.means]
        if not seen:
            return
        logits = F.linear(torch.stack([self.gaussians.means[c] for c in seen]).float(), w, b)
        check_finite_after("classifier alignment", t, {"logits of the class means": logits}, fix)
        top = float(logits.abs().max())
        if top > DIVERGED_LOGIT:
            raise TrainingError(
                f"task {t + 1}: classifier alignment diverged: logits of the class means reach {top:.3g} (a sane "
                f"head stays below {DIVERGED_LOGIT:.0e}); {fix}. The last complete task's checkpoint is kept."
            )

    def predict_eval(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(predicted run labels, true run labels) on the evaluation items of classes seen after task t."""
        return predict_eval(self, t)

    def evaluate(self, t: int) -> None:
        pred, y = self.predict_eval(t)
        row, overall, counts = task_accuracies(pred == y, self.scenario.task_of_labels(y), t + 1)
        self.tracker.add(row, overall, counts)

    # ------------------------------------------------------------------ checkpoint / resume
    def _state(self, t: int) -> dict[str, Any]:
        return {
            "task": t,
            "num_tasks": self.scenario.num_tasks,
            "method": self.cfg.method.name,
            "matrix": self.tracker.matrix,
            "curve": self.tracker.curve,
            "counts": self.tracker.counts,
            "task_seconds": self.task_seconds,
            "csv_rows": self.csv_rows,
            "class_order": self.scenario.class_order,
            "offsets": self.scenario.offsets,
            "config_sha256": getattr(self, "_config_sha256", None),
            "task_precision": self.task_precision,
            "eval_precision": self.eval_precision,
            "dataset": self._dataset_identity(),
        }

    def _dataset_identity(self) -> dict[str, Any]:
        """What the checkpoint records of the dataset, so a resume can refuse another one (computed once)."""
        if getattr(self, "_identity", None) is None:
            from .dataset_identity import dataset_identity

            self._identity = dataset_identity(self.cfg.data.dataset, self.data.bundle, self.cfg.data.root)
        return self._identity

    def save(self, t: int) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        from .snapshots import HEADS_GROUP, backbone_sha256, head_snapshots

        model = stored_weights(self.model)  # LoRA factors and heads; the backbone is rebuilt (sr2lora.run_dir)
        # For `sr2lora predict/export` (sr2lora.export): heads as after each task, and a hash that detects a
        # backbone rebuilt differently (model.pretrained=false runs store no backbone weights).
        if getattr(self, "_backbone_sha256", None) is None:
            self._backbone_sha256 = backbone_sha256(self.model.vit)
        save_checkpoint(
            self.out_dir,
            {"model": model, "stats": self.classifier.state_tensors(), "method": self.method.state_tensors(),
             HEADS_GROUP: head_snapshots(self.out_dir, self.model.heads, t)},
            {**self._state(t), "backbone_sha256": self._backbone_sha256},
        )

    def restore(self) -> int:
        """Load the last complete task's checkpoint; returns the next task to train (0 when none)."""
        if self.out_dir is None:
            return 0
        if self.dist.is_main:
            clean_partial(self.out_dir)
        ddp.barrier(self.dist)
        loaded = load_checkpoint(self.out_dir, verify=True)
        if loaded is None:
            return 0
        groups, state = loaded
        check_config_unchanged(self.out_dir, state)
        from .dataset_identity import check_same_dataset

        check_same_dataset(self.out_dir, state.get("dataset"), self._dataset_identity())
        check_scenario(self.out_dir, state, self.scenario.class_order, self.scenario.offsets)
        t = int(state["task"])
        sizes = [self.scenario.task_size(s) for s in range(t + 1)]
        restore_weights(self.model, groups["model"], sizes, self.device, self.out_dir)  # the model after task t
        self.classifier.load_state_tensors(groups.get("stats", {}))
        self.method.load_state_tensors(groups.get("method", {}))
        self.tracker.matrix = state["matrix"]
        self.tracker.curve = state["curve"]
        self.tracker.counts = state["counts"]
        self.task_seconds = state["task_seconds"]
        self.csv_rows = state.get("csv_rows", [])
        self.task_precision = list(state.get("task_precision", []))
        # checkpoints written before evaluation was float32 evaluated in the training precision
        before = state.get("eval_precision", "mixed" if "bf16" in self.task_precision else hardware.EVAL_PRECISION)
        if before != hardware.EVAL_PRECISION:
            self.eval_precision = "mixed"
            warnings.warn(
                f"{self.out_dir}: the checkpoint's tasks were evaluated in bf16 (an sr2lora from before evaluation "
                f"was float32), the rest of this run evaluates in {hardware.EVAL_PRECISION}; results.json records "
                f"eval_precision=mixed", stacklevel=2)
        if any(p != self.precision for p in self.task_precision):
            warnings.warn(
                f"{self.out_dir}: the checkpoint's tasks computed in {'/'.join(sorted(set(self.task_precision)))}, "
                f"the rest of this run computes in {self.precision} (train.precision={self.cfg.train.precision} "
                f"on this machine); results.json records precision per task", stacklevel=2)
        return t + 1

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train every task (from the checkpoint when resuming) and return the results dict."""
        if self.out_dir is not None:
            if self.dist.is_main:  # only rank 0 writes files
                self.out_dir.mkdir(parents=True, exist_ok=True)
                if not resume:
                    dump_config(self.cfg, self.out_dir / "config.yaml")
            ddp.barrier(self.dist)
            cfg_file = self.out_dir / "config.yaml"
            self._config_sha256 = file_sha256(cfg_file) if cfg_file.is_file() else None  # in state.json
        self.start_task = self.restore() if resume else 0
        ddp.check_same(self.start_task, "the task to start from", self.dist)
        self._open_logs()
        sc = self.scenario
        for t in range(self.start_task, sc.num_tasks):
            check_interrupt()
            t0 = time.perf_counter()
            torch.manual_seed(task_seed(self.cfg.seed, t))
            self.model.add_task(sc.task_size(t))
            self.model.to(self.device)
            self.train_task(t)
            self.compute_statistics(t)
            self._check_statistics(t)
            self.align(t)
            self._check_heads(t)
            self.evaluate(t)
            self.task_seconds.append(time.perf_counter() - t0)
            self.task_precision.append(self.precision)
            if self.progress:
                row = ", ".join(f"{v:.1f}" for v in self.tracker.matrix[-1][: t + 1])
                tqdm.write(f"task {t + 1}/{sc.num_tasks}: accuracy on seen classes {self.tracker.curve[-1]:.2f}% "
                           f"(per task: {row}) in {self.task_seconds[-1]:.1f}s")
            self.save(t)
            for cb in self.callbacks:
                cb.on_task(self, t)
        for cb in self.callbacks:
            cb.close()
        results = self.results()
        if self.out_dir is not None and self.dist.is_main:
            write_json_atomic(self.out_dir / "results.json", results)
        return results

    def _open_logs(self) -> None:
        """The run's loggers (:mod:`sr2lora.callbacks`): metrics.csv and TensorBoard scalars in the run folder
        (rank 0), the drift tracker with ``analysis.enabled`` (RUN/drift.json after every task), then the
        caller's."""
        logs: list[Callback] = []
        if self.out_dir is not None and self.dist.is_main:
            logs += [CSVLog(self.out_dir / "metrics.csv", self.csv_rows), TensorBoardLog(self.out_dir / "tb")]
        if self.cfg.analysis.enabled:
            from .analysis import DriftLog

            logs.append(DriftLog(self, self.out_dir if self.dist.is_main else None))
        self.callbacks = logs + self.extra_callbacks

    def _run_precision(self) -> str:
        """The precision every task computed in, or ``mixed`` for a run resumed on another kind of machine."""
        kinds = set(self.task_precision) or {self.precision}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def results(self) -> dict[str, Any]:
        sc, bundle = self.scenario, self.data.bundle
        summary = self.tracker.summary()
        names = [bundle.class_names[c] for c in sc.class_order]
        return {
            "method": self.cfg.method.name,
            "preset": self.cfg.preset,
            "seed": self.cfg.seed,
            "dataset": self.cfg.data.dataset,
            "backbone": self.cfg.model.backbone,
            "num_tasks": sc.num_tasks,
            "eval_split": self.data.eval_split,
            "accuracy_matrix": self.tracker.matrix,
            "acc_curve": self.tracker.curve,
            **summary,
            "task_test_counts": self.tracker.counts,
            "class_order": sc.class_order,
            "class_names": names,
            "task_offsets": sc.offsets,
            "seconds": float(sum(self.task_seconds)),
            "task_seconds": self.task_seconds,
            "transform": transform_spec(self.cfg.data.image_size, self.cfg.data.resize_ratio, self.mean_std),
            "dataset_info": bundle.info,
            "fallback_classes": self.classifier.fallback,
            "classifier": self.classifier.summary(),
            # tasks without an evaluation image: their accuracies are undefined, written as null
            "empty_eval_tasks": [j for j, n in enumerate(self.tracker.counts) if n == 0],
            "skipped_files": self.data.skipped_files,
            **hardware.describe(self.capabilities, self._run_precision(), self.cfg.train.precision,
                                torch.get_num_threads(), self.eval_precision),
            "task_precision": self.task_precision,
            **({"method_state": state} if (state := self.method.report()) else {}),
            "versions": {"sr2lora": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }
