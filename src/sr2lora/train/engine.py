"""The task loop: train a task, fold its LoRA, class statistics, classifier alignment, evaluation, checkpoint.

The engine never knows which method it runs: it asks the method for its trainable parameters, its extra loss
and its hooks (see :mod:`sr2lora.methods.base`). All randomness of task t is seeded from (seed, t), so a run
resumed from the checkpoint of task t−1 is identical to an uninterrupted one.
"""

from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .. import __version__
from ..classifiers import create_classifier
from ..config import RunConfig, dump_config
from ..core import distributed as ddp
from ..core import hardware
from ..core.cache import file_sha256
from ..core.errors import TrainingError
from ..core.seeding import task_seed
from ..core.signals import check_interrupt
from ..data.loaders import seeded_loader, train_loader
from ..data.run_data import prepare_data
from ..data.scenario import TaskView
from ..data.transforms import transform_spec
from ..methods import TaskContext, create_method, get_method_class
from ..methods.losses import logitnorm_cross_entropy
from ..models.build import build_model, run_transforms
from ..models.state import restore_weights, stored_weights
from ..runs.checkpoint import (
    atomic_write_json,
    check_config_unchanged,
    clean_partial,
    load_checkpoint,
    save_checkpoint,
)
from ..runs.folder import RunFolder
from ..runs.saved import check_scenario
from .callbacks import Callback
from .evaluation import lora_tasks, over_batches, predict_eval, task_indices
from .metrics import AccuracyTracker, task_accuracies
from .optim import build_optimizer
from .preflight import preflight
from .schedules import lr_at
from .step import training_step

# The "epoch" whose augmentations the method's hooks see when they go over a task's training data.
HOOKS_PASS = -1


class Trainer:
    """Runs one class-incremental experiment described by a :class:`RunConfig` into ``out_dir``."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.cfg = cfg
        # the loggers are the caller's choice (sr2lora.launch passes the run folder's own: run_loggers)
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir else None
        self.folder = RunFolder(out_dir) if out_dir else None
        self.device = hardware.resolve_device(cfg.train.device)
        # train.threads=0: torch's default of this process, also after an earlier run here set another count
        torch.set_num_threads(hardware.run_threads(cfg.train.threads))
        note = hardware.oversubscription_note(cfg.train.threads)
        if note is not None:
            warnings.warn(note, stacklevel=2)
        preflight(cfg)  # cheap checks (scenario, device, data paths) before any work
        # torchrun: join the process group (after every rank's preflight, before rank 0 writes anything)
        self.dist = ddp.init_from_env(self.device)
        ddp.barrier(self.dist)
        self.device = ddp.resolve_device(self.device, self.dist)
        self.progress = progress and self.dist.is_main
        # progress bars only on a terminal; a log file or a pipe gets the per-task lines alone
        self.bars = self.progress and sys.stderr.isatty()
        # bf16 only where the device computes it natively (sr2lora.core.hardware); decided once, recorded in results
        self.capabilities = hardware.probe(self.device)
        self.precision = hardware.choose_precision(cfg.train.precision, self.capabilities)
        # where this process computes: recorded per task (a resume elsewhere is refused unless asked for)
        self.compute = hardware.compute_record(self.capabilities, self.precision, torch.get_num_threads(),
                                               cfg.train.eval_batch_size)
        if self.progress:
            tqdm.write(hardware.summary_line(self.capabilities, self.precision, cfg.train.precision,
                                             torch.get_num_threads()))
        self.data = prepare_data(cfg, single_task=get_method_class(cfg.method.name).single_task)
        self.scenario = self.data.scenario
        self.method = create_method(cfg.method.name, cfg.method.options, cfg.method.weight)
        torch.manual_seed(task_seed(cfg.seed, -1))
        self.model = build_model(cfg, self.method.uses_lora).to(self.device)
        if cfg.train.compile:
            self.model.compile_backbone()
        self.mean_std, self.train_tf, self.test_tf = run_transforms(cfg, self.model.vit)
        # what predicts (classifier.kind or the method's own; sr2lora.classifiers): the engine only calls its
        # interface, and the classifier checks its own health (a diverged alignment stops the run)
        self.classifier = create_classifier(cfg, self.model.embed_dim, self.scenario.offsets)
        self.classifier.check_budget()  # e.g. alignment samples of a huge train.batch_size: refused before any work
        self.tracker = AccuracyTracker(self.scenario.num_tasks)
        self.task_seconds: list[float] = []
        self.start_task = 0
        self.csv_rows: list[dict] = []  # metrics.csv's rows so far (restored on resume)
        self.task_precision: list[str] = []  # per task: a resumed run may have computed elsewhere
        self.task_compute: list[dict[str, Any]] = []  # per task: device, threads, eval batch size, precision
        # what the reported accuracies were computed in: float32, unless a checkpoint from before that policy
        # evaluated its tasks in bf16 (then "mixed")
        self.eval_precision = hardware.EVAL_PRECISION

    # ------------------------------------------------------------------ one task
    def _autocast(self) -> AbstractContextManager:
        """Training's autocast; evaluation and statistics compute in float32 (sr2lora.core.hardware.EVAL_PRECISION)."""
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
        seed, workers, pin = task_seed(cfg.seed, t, 1), cfg.data.num_workers, self.device.type == "cuda"
        # each item's augmentation is seeded from (task seed, epoch, item): the same numbers with any worker count
        view = TaskView(self.data.bundle.train, self.data.train_labels, idx, self.train_tf,
                        seed=task_seed(cfg.seed, t, 5))
        view.set_epoch(HOOKS_PASS)
        loader, sampler = train_loader(view, tc.batch_size, seed, self.dist, workers, pin)
        # hooks see the whole task: on one process the training loader itself, with several beside a rank's share
        whole = loader if sampler is None else seeded_loader(view, tc.batch_size, True, seed, workers, pin)
        ctx = TaskContext(task=t, model=model, loader=whole, device=self.device, num_tasks=self.scenario.num_tasks)
        method.before_task(ctx)
        params = self._set_trainable(method.trainable_parameters(ctx))
        opt = build_optimizer(params, tc)
        grad_sync = (lambda: ddp.all_reduce_grads(params, self.dist)) if self.dist.enabled else None
        if self.dist.enabled:  # independent random draws on each rank (augmentations are per item already)
            torch.manual_seed(task_seed(cfg.seed, t, 3) + self.dist.rank)
        model.train()
        step, total_steps = 0, tc.epochs * len(loader)
        for epoch in range(tc.epochs if method.trains_task(t) else 0):  # training-free tasks: no epoch
            view.set_epoch(epoch)
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
        view.set_epoch(HOOKS_PASS)
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
            "task_compute": self.task_compute,
            "eval_precision": self.eval_precision,
            "dataset": self._dataset_identity(),
        }

    def _dataset_identity(self) -> dict[str, Any]:
        """What the checkpoint records of the dataset, so a resume can refuse another one (computed once)."""
        if getattr(self, "_identity", None) is None:
            from ..data.identity import dataset_identity

            self._identity = dataset_identity(self.cfg.data.dataset, self.data.bundle, self.cfg.data.root,
                                              self.data)
        return self._identity

    def save(self, t: int) -> None:
        """The checkpoint of task t (rank 0): the trained weights, the classifier's and method's state, the head
        snapshots and the state JSON (sr2lora.runs.checkpoint)."""
        if self.folder is None or not self.dist.is_main:
            return
        from ..models.state import backbone_sha256, head_snapshots
        from ..runs.checkpoint import read_group

        model = stored_weights(self.model)  # LoRA factors and heads; the backbone is rebuilt (models.build)
        # For `sr2lora predict/export`: heads as after each task, and a hash that detects a backbone rebuilt
        # differently (model.pretrained=false runs store no backbone weights).
        if getattr(self, "_backbone_sha256", None) is None:
            self._backbone_sha256 = backbone_sha256(self.model.vit)
        heads = RunFolder.HEADS_GROUP
        save_checkpoint(
            self.folder.path,
            {"model": model, "stats": self.classifier.state_tensors(), "method": self.method.state_tensors(),
             heads: head_snapshots(read_group(self.folder.path, heads), self.model.heads, t)},
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
        from ..data.identity import check_same_dataset

        # files of tasks not trained yet may have changed (a damaged one replaced or skipped); trained ones not
        check_same_dataset(self.out_dir, state.get("dataset"), self._dataset_identity(), trained=int(state["task"]))
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
        self.task_compute = list(state.get("task_compute", []))
        # checkpoints written before evaluation was float32 evaluated in the training precision
        before = state.get("eval_precision", "mixed" if "bf16" in self.task_precision else hardware.EVAL_PRECISION)
        if before != hardware.EVAL_PRECISION:
            self.eval_precision = "mixed"
            warnings.warn(
                f"{self.out_dir}: the checkpoint's tasks were evaluated in bf16 (an sr2lora from before evaluation "
                f"was float32), the rest of this run evaluates in {hardware.EVAL_PRECISION}; the results record "
                f"eval_precision=mixed", stacklevel=2)
        if any(p != self.precision for p in self.task_precision):
            warnings.warn(
                f"{self.out_dir}: the checkpoint's tasks computed in {'/'.join(sorted(set(self.task_precision)))}, "
                f"the rest of this run computes in {self.precision} (train.precision={self.cfg.train.precision} "
                f"on this machine); the results record precision per task", stacklevel=2)
        return t + 1

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train every task (from the checkpoint when resuming) and return the results dict.

        The loggers' ``close()`` runs however the run ends (finished, failed or interrupted)."""
        folder = self.folder
        if folder is not None:
            if self.dist.is_main:  # only rank 0 writes files
                folder.path.mkdir(parents=True, exist_ok=True)
                if not resume:
                    dump_config(self.cfg, folder.config_file)
            ddp.barrier(self.dist)
            # in state.json: a resume refuses an edited config
            self._config_sha256 = file_sha256(folder.config_file) if folder.config_file.is_file() else None
        self.start_task = self.restore() if resume else 0
        ddp.check_same(self.start_task, "the task to start from", self.dist)
        try:
            for cb in self.callbacks:
                cb.on_start(self, self.start_task)
            self._train_tasks()
        finally:
            for cb in self.callbacks:
                try:
                    cb.close()
                except Exception as exc:  # a logger never masks how the run ended
                    warnings.warn(f"{type(cb).__name__}.close() failed: {type(exc).__name__}: {exc}", stacklevel=2)
        results = self.results()
        if folder is not None and self.dist.is_main:
            atomic_write_json(folder.results_file, results)
        return results

    def _train_tasks(self) -> None:
        """Every task from ``start_task``: train, statistics, classifier, evaluation, checkpoint, loggers."""
        sc = self.scenario
        for t in range(self.start_task, sc.num_tasks):
            check_interrupt()
            t0 = time.perf_counter()
            torch.manual_seed(task_seed(self.cfg.seed, t))
            self.model.add_task(sc.task_size(t))
            self.model.to(self.device)
            self.train_task(t)
            self.compute_statistics(t)
            self.align(t)
            self.evaluate(t)
            self.task_seconds.append(time.perf_counter() - t0)
            self.task_precision.append(self.precision)
            self.task_compute.append(dict(self.compute))
            if self.progress:
                row = ", ".join(f"{v:.1f}" for v in self.tracker.matrix[-1][: t + 1])
                tqdm.write(f"task {t + 1}/{sc.num_tasks}: accuracy on seen classes {self.tracker.curve[-1]:.2f}% "
                           f"(per task: {row}) in {self.task_seconds[-1]:.1f}s")
            self.save(t)
            for cb in self.callbacks:
                cb.on_task(self, t)

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
            "task_compute": self.task_compute,
            **({"method_state": state} if (state := self.method.report()) else {}),
            "versions": {"sr2lora": __version__, "torch": torch.__version__, "python": platform.python_version()},
        }
