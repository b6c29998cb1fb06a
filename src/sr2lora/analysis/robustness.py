"""How much each relation-alignment loss, and its gradient, moves when what it is estimated from is re-drawn.

The paper argues that aligning the spectrum of R = H Hᵀ is more robust to estimation perturbations than aligning
its entries: by Weyl's inequality each sorted eigenvalue of a symmetric matrix moves by at most ‖E‖₂ under a
perturbation E, while the entries move with E itself. This module measures it on a finished run.

For a task pair (previous model = LoRA branches 0..t−1, current model = branches 0..t, as after task t) a
reference batch of task t's training images (test transform, seeded) gives the unperturbed loss and gradient
w.r.t. task t's LoRA factors, for the spectral (``sr2lora``), ``spectral-batch`` and ``entrywise`` losses. Then,
for each perturbation setting, ``draws`` re-draws give the loss (all of them) and its gradient (the first
``grad_draws``):

- ``augmentation``: the same images with the training augmentation re-drawn;
- ``batch``: another batch of the same size from task t's training images;
- ``noise``: Gaussian noise of relative size ε on every per-layer feature, new and old side independently
  (h + ε‖h‖/√d · z), for each ε of a sweep;
- ``batch_size``: random subsets of the reference batch, for each smaller batch size.

Per (setting, loss): the coefficient of variation of the loss, its mean relative change from the reference,
the total variance of the gradient (sum over parameters of the per-coordinate variance) and that variance
relative to ‖g_ref‖², and the cosine between each perturbed gradient and the reference one. Scale-free numbers
(CV, relative variance, cosine) are the ones to compare across losses, whose scales differ. On every perturbed
relation (per sample and batch mean, new and old side) Weyl's bound max_i |Δλ_i| ≤ ‖ΔR‖₂ is checked in float64,
and ‖Δλ‖₂ / ‖ΔR‖_F (≤ 1, Hoffman–Wielandt) says which share of the entry perturbation reaches the spectrum.
Everything is seeded: the same command gives the same JSON.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..methods.losses import batch_spectral_relation_loss, entrywise_relation_loss, spectral_relation_loss
from .stats import merge_weyl, weyl_check

if TYPE_CHECKING:
    from .restore import AnalysisRun

SCHEMA = "sr2lora.robustness/1"
LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "sr2lora": spectral_relation_loss,
    "spectral-batch": batch_spectral_relation_loss,
    "entrywise": entrywise_relation_loss,
}
LOSS_TITLES = {"sr2lora": "spectral (sr2lora)", "spectral-batch": "batch-spectral", "entrywise": "entry-wise"}
DEFAULT_EPS = (0.001, 0.003, 0.01, 0.03, 0.1)

FeatureFn = Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]  # (x, grad) -> (h_new, h_old)


@dataclass
class RobustnessOptions:
    """What to re-draw and how often (see the module docstring)."""

    task: int | None = None  # current task t (0-based, ≥ 1); None: the last learned task
    batch_size: int | None = None  # reference batch size; None: train.batch_size (capped by the task's images)
    draws: int = 24  # re-draws per setting for the loss statistics
    grad_draws: int = 6  # of which this many also give a gradient (the expensive part)
    eps: Sequence[float] = DEFAULT_EPS  # relative feature-noise sizes
    batch_sizes: Sequence[int] | None = None  # None: b/2, b/4, b/8 (those ≥ 2)
    seed: int = 0
    relation_norm: str | None = None  # None: the run's method.relation_norm (else "none")
    beta: float | None = None  # None: the run's method.beta (else 1)

    def check(self) -> None:
        """Raise ValueError naming the option when a value cannot work."""
        if self.draws < 2:
            raise ValueError(f"--draws: need at least 2 re-draws, got {self.draws}")
        if not 1 <= self.grad_draws <= self.draws:
            raise ValueError(f"--grad-draws: must be between 1 and --draws ({self.draws}), got {self.grad_draws}")
        if any(not (e > 0) for e in self.eps):
            raise ValueError(f"--eps: noise sizes must be positive, got {list(self.eps)}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ValueError(f"--batch-size: need at least 2 images, got {self.batch_size}")


# ---------------------------------------------------------------- the pure part (features in, numbers out)


def relation64(h: torch.Tensor, relation_norm: str = "none") -> np.ndarray:
    """R = H Hᵀ per sample in float64 (numpy), with the same normalisation as :func:`sr2lora.methods.losses.relation_matrix`."""
    h = h.detach().to("cpu", torch.float64)
    if relation_norm == "l2":
        h = torch.nn.functional.normalize(h, dim=-1)
    r = h @ h.transpose(-1, -2)
    r = 0.5 * (r + r.transpose(-1, -2))
    if relation_norm == "trace":
        r = r / torch.diagonal(r, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-300)[..., None, None]
    return r.numpy()


def perturbation_checks(r_ref: np.ndarray, r_new: np.ndarray, rtol: float = 1e-9) -> tuple[dict[str, Any], list]:
    """Weyl's bound on each pair (…, L, L) that differs (ΔR ≠ 0; an unchanged matrix is no perturbation) and
    the ratios ‖Δλ‖₂ / ‖ΔR‖_F of those pairs."""
    a = r_ref.reshape(-1, *r_ref.shape[-2:])
    b = r_new.reshape(-1, *r_new.shape[-2:])
    d = b - a
    keep = np.linalg.norm(d, axis=(-2, -1)) > 0
    a, b, d = a[keep], b[keep], d[keep]
    ev_a, ev_b = np.linalg.eigvalsh(a), np.linalg.eigvalsh(b)
    ratios = (np.linalg.norm(ev_b - ev_a, axis=-1) / np.linalg.norm(d, axis=(-2, -1))).tolist()
    return weyl_check(a, b, rtol), ratios


def _flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> np.ndarray:
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double().cpu()
                      for g, p in zip(grads, params)]).numpy()


def _loss_stats(values: list[float], ref: float) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    mean, std = float(v.mean()), float(v.std(ddof=1))
    return {"loss_mean": mean, "loss_std": std, "loss_cv": std / abs(mean) if mean != 0 else None,
            "loss_rel_change": float(np.abs(v - ref).mean() / abs(ref)) if ref != 0 else None}


def _grad_stats(grads: list[np.ndarray], g_ref: np.ndarray) -> dict[str, Any]:
    g = np.stack(grads)
    var = float(((g - g.mean(0)) ** 2).sum(1).sum() / max(len(g) - 1, 1))
    ref2 = float(g_ref @ g_ref)
    norms = np.linalg.norm(g, axis=1) * np.sqrt(ref2)
    cos = [float(x) for x in (g @ g_ref)[norms > 0] / norms[norms > 0]]
    return {"grad_var": var, "grad_var_rel": var / ref2 if ref2 > 0 else None,
            "grad_cos_mean": float(np.mean(cos)) if cos else None, "grad_cos_min": float(np.min(cos)) if cos else None,
            "grad_draws": len(grads)}


def feature_noise(h: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of relative size ``eps`` per feature vector: ε‖h‖/√d · z, z ~ N(0, I) (no gradient)."""
    h = h.detach()
    z = torch.randn(h.shape, generator=generator, dtype=torch.float32).to(h.device, h.dtype)
    return eps * h.norm(dim=-1, keepdim=True) / h.shape[-1] ** 0.5 * z


@dataclass
class Setting:
    """One perturbation: ``draw(k, grad)`` gives (h_new, h_old, index of the reference rows they match)."""

    kind: str
    value: float | int | None
    draw: Callable[[int, bool], tuple[torch.Tensor, torch.Tensor, np.ndarray]]

    @property
    def label(self) -> str:
        if self.kind == "noise":
            return f"feature noise ε={self.value:g}"
        if self.kind == "batch_size":
            return f"batch size {self.value}"
        return {"augmentation": "augmentation re-drawn", "batch": "another batch"}[self.kind]


def measure(h_ref: tuple[torch.Tensor, torch.Tensor], params: Sequence[torch.Tensor], settings: Sequence[Setting],
            draws: int, grad_draws: int, relation_norm: str = "none", beta: float = 1.0,
            losses: Sequence[str] = tuple(LOSSES)) -> dict[str, Any]:
    """The statistics of every (setting, loss) and the Weyl checks, from the reference features ``h_ref``
    (h_new with its graph to ``params``, h_old) and the settings' re-draws."""
    fns = {n: functools.partial(LOSSES[n], relation_norm=relation_norm, beta=beta) for n in losses}
    hn_ref, ho_ref = h_ref
    ref_loss = {n: fns[n](hn_ref, ho_ref) for n in losses}
    g_ref = {n: _flat_grad(ref_loss[n], params) for n in losses}
    rn_ref, ro_ref = relation64(hn_ref, relation_norm), relation64(ho_ref, relation_norm)
    out_settings = []
    for s in settings:
        vals: dict[str, list[float]] = {n: [] for n in losses}
        grads: dict[str, list[np.ndarray]] = {n: [] for n in losses}
        weyl, ratios = [], []
        for k in range(draws):
            grad = k < grad_draws
            hn, ho, rows = s.draw(k, grad)
            for n in losses:
                value = fns[n](hn, ho)
                vals[n].append(float(value.detach()))
                if grad:
                    grads[n].append(_flat_grad(value, params))
            rn, ro = relation64(hn, relation_norm), relation64(ho, relation_norm)
            pairs = ((rn_ref[rows], rn, True), (ro_ref[rows], ro, False),  # per sample, new and old side
                     (rn_ref.mean(0), rn.mean(0), False), (ro_ref.mean(0), ro.mean(0), False))  # batch means
            for r_ref, r, keep_ratio in pairs:
                w, q = perturbation_checks(r_ref, r)
                weyl.append(w)
                if keep_ratio:  # the share of the new side's per-sample entry change that reaches the spectrum
                    ratios += q
        out_settings.append({
            "perturbation": s.kind, "value": s.value, "label": s.label,
            "losses": {n: {**_loss_stats(vals[n], float(ref_loss[n].detach())), **_grad_stats(grads[n], g_ref[n])}
                       for n in losses},
            "weyl": merge_weyl(weyl),
            "spectrum_to_entry_ratio": float(np.mean(ratios)) if ratios else None,
        })
    return {
        "losses": list(losses),
        "reference": {n: {"loss": float(ref_loss[n].detach()), "grad_norm": float(np.linalg.norm(g_ref[n]))}
                      for n in losses},
        "settings": out_settings,
        "weyl": merge_weyl([s["weyl"] for s in out_settings]),
    }


# ---------------------------------------------------------------- a run's model and data


def _seed(*parts: int) -> int:
    return int(np.random.default_rng([int(p) for p in parts]).integers(2**62))


def run_settings(trainer: AnalysisRun, t: int, opts: RobustnessOptions, features: FeatureFn,
                 h_ref: tuple[torch.Tensor, torch.Tensor], ref_idx: np.ndarray, task_idx: np.ndarray) -> list[Setting]:
    """The perturbation settings of a run: augmentation, another batch, feature noise (ε sweep), batch sizes."""
    from ..data.scenario import TaskView

    data = trainer.data
    b = len(ref_idx)

    def images(idx: np.ndarray, transform, seed: int | None) -> torch.Tensor:
        view = TaskView(data.bundle.train, data.train_labels, idx, transform)
        with torch.random.fork_rng(devices=[]):  # the augmentation's draws, without touching the global state
            if seed is not None:
                torch.manual_seed(seed)
            return torch.stack([view[i][0] for i in range(len(view))])

    rows_all = np.arange(b)

    def augmentation(k: int, grad: bool):
        hn, ho = features(images(ref_idx, trainer.train_tf, _seed(opts.seed, t, 1, k)), grad)
        return hn, ho, rows_all

    others = np.setdiff1d(task_idx, ref_idx) if len(task_idx) >= 2 * b else task_idx

    def batch(k: int, grad: bool):
        rng = np.random.default_rng([opts.seed, t, 2, k])
        idx = np.sort(rng.choice(others, size=min(b, len(others)), replace=False))
        hn, ho = features(images(idx, trainer.test_tf, None), grad)
        return hn, ho, rows_all[: len(idx)]

    def noise(eps: float) -> Callable[[int, bool], tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        def draw(k: int, grad: bool):
            g = torch.Generator().manual_seed(_seed(opts.seed, t, 3, int(round(eps * 1e6)), k))
            hn, ho = h_ref
            hn = hn if grad else hn.detach()
            return hn + feature_noise(hn, eps, g), ho + feature_noise(ho, eps, g), rows_all
        return draw

    def subset(size: int) -> Callable[[int, bool], tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        def draw(k: int, grad: bool):
            rows = np.sort(np.random.default_rng([opts.seed, t, 4, size, k]).choice(b, size=size, replace=False))
            hn, ho = h_ref
            hn = hn if grad else hn.detach()
            sel = torch.as_tensor(rows, device=hn.device)
            return hn[sel], ho[sel], rows
        return draw

    sizes = opts.batch_sizes if opts.batch_sizes is not None else [b // 2, b // 4, b // 8]
    sizes = sorted({int(s) for s in sizes if 2 <= int(s) < b}, reverse=True)
    out = [Setting("augmentation", None, augmentation), Setting("batch", None, batch)]
    out += [Setting("noise", e, noise(e)) for e in sorted({float(e) for e in opts.eps})]
    out += [Setting("batch_size", s, subset(s)) for s in sizes]
    return out


def robustness_run(run_dir: str | Path, opts: RobustnessOptions | None = None,
                   device: str | None = None) -> dict[str, Any]:
    """robustness.json's content for a finished run (see the module docstring). Raises ValueError for a run or
    option that cannot be measured (no LoRA, one task only, a task out of range)."""
    from ..methods.losses import RELATION_NORMS
    from ..train.evaluation import task_indices
    from .restore import restore_run

    opts = opts or RobustnessOptions()
    opts.check()
    trainer, learned = restore_run(run_dir, device)
    cfg, model, method = trainer.cfg, trainer.model, trainer.method
    if not method.uses_lora:
        raise ValueError(f"{run_dir}: method {cfg.method.name!r} trains no LoRA, so there is no gradient to measure; "
                         "use a LoRA run (sr2lora, seqlora, entrywise, ...)")
    if getattr(method, "rewrites_past", False):
        raise ValueError(f"{run_dir}: method {cfg.method.name!r} rescales past LoRA branches, so the previous "
                         "model cannot be rebuilt from the final checkpoint")
    t = learned - 1 if opts.task is None else int(opts.task)
    if not 1 <= t < learned:
        raise ValueError(f"--task: the current task must be between 1 and {learned - 1} (0-based; the run learned "
                         f"{learned} tasks), got {t}")
    norm = opts.relation_norm or getattr(method.options, "relation_norm", "none")
    if norm not in RELATION_NORMS:
        raise ValueError(f"--relation-norm: expected one of {', '.join(RELATION_NORMS)}, got {norm!r}")
    beta = float(opts.beta if opts.beta is not None else getattr(method.options, "beta", 1.0))

    sc, data = trainer.scenario, trainer.data
    task_idx = task_indices(data.train_labels, data.train_index, sc.offsets[t], sc.offsets[t + 1])
    b = min(opts.batch_size or cfg.train.batch_size, len(task_idx))
    if b < 2:
        raise ValueError(f"{run_dir}: task {t} has {len(task_idx)} training images; need at least 2")
    ref_idx = np.sort(np.random.default_rng([opts.seed, t, 0]).choice(task_idx, size=b, replace=False))

    model.eval()
    model.fold(upto=t)  # branches 0..t−1 fixed; branch t stays a low-rank path the gradient reaches
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.lora_parameters(t)
    for p in params:
        p.requires_grad_(True)
    dev = trainer.device

    def features(x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(dev)
        with torch.no_grad():  # the frozen stem and the previous model carry no gradient
            tokens = model.embed(x)
            old = model(x, tasks=t, layers=True, logits=False, tokens=tokens).layers.float()
        with torch.set_grad_enabled(grad):
            new = model(x, tasks=t + 1, layers=True, logits=False, tokens=tokens).layers.float()
        return new, old

    from ..data.scenario import TaskView

    view = TaskView(data.bundle.train, data.train_labels, ref_idx, trainer.test_tf)
    h_ref = features(torch.stack([view[i][0] for i in range(len(view))]), True)
    settings = run_settings(trainer, t, opts, features, h_ref, ref_idx, task_idx)
    try:
        result = measure(h_ref, params, settings, opts.draws, opts.grad_draws, norm, beta)
    finally:
        for p in params:
            p.requires_grad_(False)
        model.fold()
    doc = {
        "schema": SCHEMA,
        "run": str(run_dir),
        "method": cfg.method.name,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "pair": {"previous": f"LoRA branches 0..{t - 1} (model after task {t - 1})",
                 "current": f"LoRA branches 0..{t} (model after task {t})", "task": t},
        "relation_norm": norm,
        "beta": beta,
        "layers": "all",
        "batch_size": b,
        "reference_items": [int(i) for i in ref_idx],
        "draws": opts.draws,
        "grad_draws": opts.grad_draws,
        "robustness_seed": opts.seed,
        "eps": [s.value for s in settings if s.kind == "noise"],
        "batch_sizes": [s.value for s in settings if s.kind == "batch_size"],
        "num_parameters": int(sum(p.numel() for p in params)),
        "precision": "fp32",
        **result,
    }
    doc["reading"] = reading(doc)
    return doc


# ---------------------------------------------------------------- reading


def setting_of(doc: dict[str, Any], kind: str, value: Any = None) -> dict[str, Any] | None:
    for s in doc["settings"]:
        if s["perturbation"] == kind and (value is None or s["value"] == value):
            return s
    return None


def _wins(doc: dict[str, Any], key: str) -> tuple[int, int]:
    """(settings where the spectral loss has the smaller ``key`` than the entry-wise one, settings compared)."""
    wins = total = 0
    for s in doc["settings"]:
        a, e = s["losses"]["sr2lora"][key], s["losses"]["entrywise"][key]
        if a is not None and e is not None:
            total += 1
            wins += a < e
    return wins, total


def _verdict(wins: int, total: int) -> str:
    return ("in every setting" if wins == total else "in none of the settings" if wins == 0
            else "in most settings" if wins > total / 2 else "in half of the settings" if 2 * wins == total
            else "in a minority of the settings")


def reading(doc: dict[str, Any]) -> str:
    """A short paragraph from the numbers: does the spectral loss (its value, its gradient) move less under the
    perturbations than the entry-wise loss?"""
    if not {"sr2lora", "entrywise"} <= set(doc["losses"]):
        return ""
    t = doc["pair"]["task"]
    lw, lt = _wins(doc, "loss_rel_change")
    gw, gt = _wins(doc, "grad_var_rel")
    parts = [f"Task pair {t - 1} → {t} of this {doc['method']} run (batch {doc['batch_size']}, {doc['draws']} "
             f"re-draws, gradients from {doc['grad_draws']}; spectral = sr2lora's per-sample eigenvalue loss)."]
    if lt:
        parts.append(f"Loss value: the spectral loss moved less from its unperturbed value than the entry-wise loss "
                     f"in {lw} of {lt} perturbation settings.")
    if gt:
        cos = [(s["losses"]["sr2lora"]["grad_cos_mean"], s["losses"]["entrywise"]["grad_cos_mean"])
               for s in doc["settings"]]
        cos = [c for c in cos if None not in c]
        tail = (f"; mean cosine to the unperturbed gradient {np.mean([c[0] for c in cos]):.3f} (spectral) vs "
                f"{np.mean([c[1] for c in cos]):.3f} (entry-wise)") if cos else ""
        parts.append(f"Gradient: the spectral loss's gradient had the lower relative variance in {gw} of {gt} "
                     f"settings{tail}.")
    mid = setting_of(doc, "noise", 0.01) or next((s for s in doc["settings"] if s["perturbation"] == "noise"), None)
    if mid is not None:
        a, e = mid["losses"]["sr2lora"], mid["losses"]["entrywise"]
        parts.append(f"Under {mid['label']}: relative loss change {_num(a['loss_rel_change'])} vs "
                     f"{_num(e['loss_rel_change'])}, relative gradient variance {_num(a['grad_var_rel'])} vs "
                     f"{_num(e['grad_var_rel'])}.")
    if lt and gt:
        parts.append(f"The paper's second claim (spectral alignment is more robust than entry-wise) holds here "
                     f"{_verdict(lw, lt)} for the loss value and {_verdict(gw, gt)} for its gradient.")
    w = doc["weyl"]
    if w["checks"]:
        parts.append(f"Weyl's bound held on {w['holds']} of {w['checks']} perturbed relation matrices "
                     f"(fraction {w['fraction']:.6f}; largest excess {w['max_excess_rel']:.2e} of the matrix scale).")
    return " ".join(parts)


def _num(x: float | None, fmt: str = ".3g") -> str:
    return "–" if x is None else format(x, fmt)
