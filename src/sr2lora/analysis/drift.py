"""Drift analysis: how much the representation of an old task moves as later tasks are learned.

For each learned task j a fixed held-out sample of its evaluation images is drawn (seeded, ``samples_per_task``
items, indices stored). For every later task t ≥ j the model after task t ("now") is compared with the model
right after task j ("then") on that sample:

- ``relation_drift``: mean over the sample of ‖R_now − R_then‖_F, R = H Hᵀ the inter-layer relation of the
  per-layer [CLS] features (``relation_norm`` none, the reference scale); ``relation_drift_rel`` divides each
  sample's value by ‖R_then‖_F;
- ``spectrum_drift``: mean over the sample of ‖σ(R_now) − σ(R_then)‖₂ (sorted eigenvalues: what SR²-LoRA aligns);
- ``prototype_shift``: ‖μ̂_now − μ̂_then‖₂ of the L2-normalised class means of the final feature, averaged over
  task j's classes (those present in the sample);
- ``margin``: mean of true-class logit − best other logit over every class seen at t, with the heads as they were
  after task t (``margin_positive``: the fraction of samples with a positive margin, i.e. classified correctly).

The model after any earlier task s is computed exactly from a later model with ``model(x, tasks=s+1)`` (LoRA
branches are never changed after their task), so one code path serves both the in-training analysis
(``analysis.enabled=true``, the engine calls :meth:`DriftTracker.step` after each task) and the offline one
(``sr2lora analyze RUN_DIR``, from the final checkpoint and the per-task head snapshots it holds).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.atomic import atomic_write_json
from ..core.hardware import float32_evaluation
from ..methods.losses import relation_matrix, relation_spectrum
from ..models.state import snapshots_by_task
from ..runs.folder import RunFolder, discover_runs
from ..train.callbacks import Callback
from ..train.evaluation import RunView, eval_loader, lora_tasks
from .drift_margin import drift_margin_summary

if TYPE_CHECKING:
    from ..train.engine import Trainer

SCHEMA = "sr2lora.drift/1"
MEASURES = ("relation_drift", "relation_drift_rel", "spectrum_drift", "prototype_shift", "margin",
            "margin_positive")



def held_out_sample(labels: np.ndarray, index: np.ndarray, lo: int, hi: int, n: int, seed: int,
                    task: int) -> np.ndarray:
    """Sorted indices of up to ``n`` evaluation items with run label in [lo, hi), seeded by (seed, task).

    ``labels`` are the run labels of all evaluation images and ``index`` the items that may be evaluated; the same
    arguments always give the same sample, so the analysis during training and offline look at the same images.
    """
    index = np.asarray(index, dtype=np.int64)
    lab = np.asarray(labels)[index]
    cand = index[(lab >= lo) & (lab < hi)]
    if n >= len(cand):
        return np.sort(cand)
    rng = np.random.default_rng([int(seed), int(task)])
    return np.sort(rng.choice(cand, size=n, replace=False))


@dataclass
class Probe:
    """What one model gives on one task's sample: relation matrices, spectra, class prototypes."""

    relation: torch.Tensor  # (S, L, L)
    spectrum: torch.Tensor  # (S, L) ascending
    classes: list[int]  # run labels with a prototype
    prototypes: torch.Tensor  # (len(classes), d), L2-normalised class means


def make_probe(layers: torch.Tensor, feature: torch.Tensor, labels: torch.Tensor) -> Probe:
    """Relation, spectrum and normalised class means of per-layer features (S, L, d) and final features (S, d)."""
    layers, feature = layers.float().cpu(), feature.float().cpu()
    classes = sorted(int(c) for c in torch.unique(labels))
    means = torch.stack([feature[labels == c].mean(0) for c in classes])
    return Probe(
        relation=relation_matrix(layers, "none"),
        spectrum=relation_spectrum(layers, "none"),
        classes=classes,
        prototypes=torch.nn.functional.normalize(means, dim=-1),
    )


def compare(now: Probe, then: Probe, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The drift measures of one (old task j, later task t) pair; ``logits`` over all classes seen at t."""
    diff = (now.relation - then.relation).flatten(1).norm(dim=1)
    ref = then.relation.flatten(1).norm(dim=1).clamp_min(1e-12)
    spec = (now.spectrum - then.spectrum).norm(dim=1)
    common = [c for c in then.classes if c in now.classes]
    pn = now.prototypes[[now.classes.index(c) for c in common]]
    pt = then.prototypes[[then.classes.index(c) for c in common]]
    logits = logits.float().cpu()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    margin = true - other
    return {
        "relation_drift": float(diff.mean()),
        "relation_drift_rel": float((diff / ref).mean()),
        "spectrum_drift": float(spec.mean()),
        "prototype_shift": float((pn - pt).norm(dim=1).mean()),
        "margin": float(margin.mean()),
        "margin_std": float(margin.std(unbiased=False)),
        "margin_positive": float((margin > 0).float().mean()),
    }


FeatureFn = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]  # (task j, model after s) -> (layers, feat)
LogitFn = Callable[[int, torch.Tensor], torch.Tensor]  # (heads after t, features) -> logits


class DriftTracker:
    """Accumulates the drift records task by task; ``step(t)`` adds every (j, t) pair with j ≤ t.

    ``features(j, s)`` returns the per-layer and final features of task j's sample under the model after task s;
    ``logits(t, feature)`` the logits of heads 0..t as they were after task t. "Then" references are computed
    once per task (after task j) and kept; when missing (a resumed run) they are recomputed from the model after
    task j, which a later model reproduces exactly.
    """

    def __init__(self, samples: dict[int, tuple[np.ndarray, np.ndarray]], offsets: Sequence[int],
                 features: FeatureFn, logits: LogitFn, meta: dict[str, Any] | None = None) -> None:
        self.samples = samples
        self.offsets = list(offsets)
        self.features = features
        self.logits = logits
        self.meta = dict(meta or {})
        self.refs: dict[int, Probe] = {}
        self.records: dict[int, dict[int, dict[str, float]]] = {}
        self.num_layers: int | None = None
        self.heads_missing: list[int] = []  # filled by the logits provider when head snapshots are absent

    def step(self, t: int) -> None:
        """Measure every learned task j ≤ t under the model after task t."""
        for j in range(t + 1):
            labels = torch.as_tensor(self.samples[j][1], dtype=torch.long)
            layers, feat = self.features(j, t)
            self.num_layers = int(layers.shape[1])
            now = make_probe(layers, feat, labels)
            if j not in self.refs:
                if j == t:
                    self.refs[j] = now
                else:
                    self.refs[j] = make_probe(*self.features(j, j), labels)
            rec = compare(now, self.refs[j], self.logits(t, feat), labels)
            self.records.setdefault(j, {})[t] = rec

    def load_records(self, data: dict[str, Any]) -> None:
        """Take over the records of an earlier drift.json (a resumed run) when its sample is the same."""
        for task in data.get("tasks", []):
            j = int(task["task"])
            if j in self.samples and list(self.samples[j][0]) == list(task["sample"]["indices"]):
                for rec in task["after"]:
                    self.records.setdefault(j, {})[int(rec["t"])] = {k: v for k, v in rec.items() if k != "t"}

    def to_json(self) -> dict[str, Any]:
        """The drift.json document (see :data:`SCHEMA` and the module docstring)."""
        tasks = []
        for j in sorted(self.records):
            idx, lab = self.samples[j]
            tasks.append({
                "task": j,
                "labels": [self.offsets[j], self.offsets[j + 1]],
                "sample": {"indices": [int(i) for i in idx], "labels": [int(y) for y in lab]},
                "after": [{"t": t, **self.records[j][t]} for t in sorted(self.records[j])],
            })
        learned = max(self.records) + 1 if self.records else 0
        doc = {
            "schema": SCHEMA,
            **self.meta,
            "num_layers": self.num_layers,
            "tasks_analyzed": learned,
            "measures": list(MEASURES) + ["margin_std"],
            "tasks": tasks,
            "summary": summarize_drift(tasks, learned),
        }
        doc["drift_margin"] = drift_margin_summary([doc])  # this run's pairs (sr2lora.analysis.drift_margin)
        return doc


def summarize_drift(tasks: list[dict[str, Any]], learned: int) -> list[dict[str, Any]]:
    """Per t: each measure averaged over the old tasks j < t (None at t = 0), and the margin of task t itself."""
    out = []
    for t in range(learned):
        row: dict[str, Any] = {"t": t, "tasks_learned": t + 1, "old_tasks": t}
        for m in MEASURES:
            vals = [r[m] for task in tasks if task["task"] < t for r in task["after"] if r["t"] == t]
            row[m] = float(np.mean(vals)) if vals else None
        cur = [r["margin"] for task in tasks if task["task"] == t for r in task["after"] if r["t"] == t]
        row["margin_current"] = cur[0] if cur else None
        out.append(row)
    return out


# ---------------------------------------------------------------- the engine side


def trainer_tracker(trainer: RunView, samples_per_task: int, seed: int, source: str,
                    heads: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                    previous: Path | None = None) -> DriftTracker:
    """A tracker over the model and evaluation data of a :class:`~sr2lora.train.engine.Trainer` (during training) or
    of a run restored from its folder (:func:`sr2lora.analysis.restore.restore_run`), read through their public attributes.

    ``heads``: per-task head snapshots {t: (weight, bias)} (offline); None uses the model's current heads 0..t,
    which is right during training, where ``step(t)`` runs right after task t. ``previous``: an earlier
    drift.json of the same run (a resumed run) whose records are kept when its settings match.
    """
    data, sc = trainer.data, trainer.scenario
    samples: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for j in range(sc.num_tasks):
        idx = held_out_sample(data.eval_labels, data.eval_index, sc.offsets[j], sc.offsets[j + 1],
                              samples_per_task, seed, j)
        samples[j] = (idx, data.eval_labels[idx])

    @torch.no_grad()
    def features(j: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = samples[j][0]
        loader = eval_loader(trainer, data.eval_images, data.eval_labels, idx)
        trainer.model.eval()
        layers, feats = [], []
        for x, _, _ in loader:
            with float32_evaluation(trainer.device):  # as every evaluation (sr2lora.core.hardware.EVAL_PRECISION)
                out = trainer.model(x.to(trainer.device), tasks=lora_tasks(trainer.method.uses_lora, s),
                                    layers=True, logits=False)
            layers.append(out.layers.float().cpu())
            feats.append(out.feature.float().cpu())
        return torch.cat(layers), torch.cat(feats)

    missing: list[int] = []  # tasks whose head snapshot is absent (older checkpoints)

    @torch.no_grad()
    def logits(t: int, feature: torch.Tensor) -> torch.Tensor:
        snap = None if heads is None else heads.get(t)
        if snap is None:
            if heads is not None and t not in missing:
                missing.append(t)
            snap = trainer.model.heads.concatenated(t + 1)
        w, b = snap
        return feature.float() @ w.float().cpu().T + b.float().cpu()

    cfg = trainer.cfg
    meta = {
        "source": source,
        "method": cfg.method.name,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "num_tasks": sc.num_tasks,
        "task_offsets": list(sc.offsets),
        "eval_split": data.eval_split,
        "samples_per_task": samples_per_task,
        "sample_seed": seed,
        "relation_norm": "none",
    }
    tracker = DriftTracker(samples, sc.offsets, features, logits, meta)
    tracker.heads_missing = missing
    if previous is not None and Path(previous).is_file():
        try:
            old = load_drift(previous)
        except (OSError, ValueError):
            old = {}
        if all(old.get(k) == meta[k] for k in ("samples_per_task", "sample_seed", "eval_split", "num_tasks")):
            tracker.load_records(old)
    return tracker


class DriftLog(Callback):
    """``analysis.enabled``: the drift tracker as a logger of the trainer; ``path`` (RUN/drift.json) rewritten
    after every task by the main process, its records kept across a resume when the settings match (``path``
    None: measured, not written)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.tracker: DriftTracker | None = None
        self.write = False

    def on_start(self, trainer: Trainer, first_task: int) -> None:
        a = trainer.cfg.analysis  # every process measures (evaluation is sharded); the main one writes
        self.tracker = trainer_tracker(trainer, a.samples_per_task, a.seed, "training", previous=self.path)
        self.write = self.path is not None and trainer.dist.is_main

    def on_task(self, trainer: Trainer, t: int) -> None:
        self.tracker.step(t)
        if self.write:
            atomic_write_json(self.path, self.tracker.to_json())


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders to analyze: a run folder (finished or not) as given, any other folder searched for finished
    runs."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        out.extend([p] if RunFolder(p).is_run() else discover_runs([p]))
    return out


# ---------------------------------------------------------------- offline, from a finished run's checkpoint


def analyze_run(run_dir: str | Path, samples_per_task: int | None = None, seed: int | None = None,
                device: str | None = None) -> dict[str, Any]:
    """Recompute the drift measures of a run from its final checkpoint (no training); returns drift.json's dict.

    Models after earlier tasks are exact (``tasks=s+1``); margins use the per-task head snapshots the checkpoint
    holds (runs from before the snapshots existed fall back to the final heads, with a warning and
    ``"heads": "final"`` in the result).
    """
    from .restore import restore_run

    run_dir = Path(run_dir)
    restored, learned = restore_run(run_dir, device)
    cfg = restored.cfg
    n = samples_per_task if samples_per_task is not None else cfg.analysis.samples_per_task
    s = seed if seed is not None else cfg.analysis.seed
    if n <= 0:
        raise ValueError(f"--samples: must be positive, got {n}")
    heads = snapshots_by_task(restored.run.groups.get(RunFolder.HEADS_GROUP, {}))
    tracker = trainer_tracker(restored, n, s, "checkpoint", heads=heads)
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
    from ..config import load_config
    from ..core.errors import CheckpointError

    folder = RunFolder(run_dir)
    run_dir, path = folder.path, folder.drift_file
    if path.is_file() and not recompute and folder.is_run():
        a = load_config(str(folder.config_file)).analysis
        want_n = samples_per_task if samples_per_task is not None else a.samples_per_task
        want_seed = seed if seed is not None else a.seed
        try:
            doc = load_drift(path)
            results = folder.read_results()
        except (OSError, ValueError, CheckpointError):
            doc, results = {}, {}
        if (doc.get("schema") == SCHEMA and doc.get("samples_per_task") == want_n
                and doc.get("sample_seed") == want_seed and doc.get("tasks_analyzed") == results.get("num_tasks")):
            if "drift_margin" not in doc or "run" not in doc:  # written before these keys existed
                doc["run"] = str(run_dir)
                doc["drift_margin"] = drift_margin_summary([doc])
                atomic_write_json(path, doc)
            return doc, True
    doc = analyze_run(run_dir, samples_per_task, seed, device)
    atomic_write_json(path, doc)
    return doc, False


def load_drift(path: str | Path) -> dict[str, Any]:
    """Read a drift.json."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
