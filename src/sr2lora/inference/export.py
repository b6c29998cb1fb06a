"""Export a finished run as one plain timm model (``sr2lora export``).

:func:`export_run` folds every LoRA pair into its qkv weight (W + Σ_s B_s A_s, in float64, cast back) and
stacks the heads into one ``head`` Linear: the result is the state dict of the same timm architecture with
``num_classes`` = the learned classes, loadable without sr2lora (see the JSON sidecar's ``load`` entry).

The exported model computes in float32, as the run's own evaluation did whatever ``train.precision`` it trained
in (:data:`sr2lora.core.hardware.EVAL_PRECISION`), so on the same machine it gives exactly the accuracies the run
reported. Runs written before that policy and trained in bf16 (no ``eval_precision`` in their results)
evaluated in bf16 and can differ from it by a few images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..core.atomic import WRITE_ERRNOS, atomic_paths, json_safe, leftover_temps, save_safetensors, temp_prefix
from ..core.errors import CheckpointError, OutputError
from ..models.state import plain_backbone_state
from .load import LoadedRun, load_run

EXPORT_FORMAT = "sr2lora-export/1"


def timm_architecture(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """(timm model name, ``timm.create_model`` kwargs without ``num_classes``) of the run's backbone."""
    from ..models.backbone import IMGFOCUS_BACKBONE

    kwargs: dict[str, Any] = {"img_size": cfg.data.image_size, **cfg.model.timm_kwargs}
    if cfg.model.backbone == IMGFOCUS_BACKBONE:
        from ..models.imgfocus import IMGFOCUS_TIMM_NAME

        kwargs.pop("pos_embed_antialias", None)  # a load-time option of sr2lora, not a timm kwarg
        return IMGFOCUS_TIMM_NAME, kwargs
    return cfg.model.backbone, kwargs


@torch.no_grad()
def folded_state_dict(run: LoadedRun) -> dict[str, torch.Tensor]:
    """The timm state dict of the loaded model: LoRA folded into ``blocks.i.attn.qkv.weight``, one ``head``."""
    from ..models.lora import LoRAQKV

    vit = run.model.cil.vit
    state = {k: v.detach().cpu().clone() for k, v in plain_backbone_state(vit).items()}
    for name, module in vit.named_modules():
        if isinstance(module, LoRAQKV) and module.num_tasks:
            w = module.base.weight.detach().to(torch.float64).clone()
            for s in range(module.num_tasks):
                w += module.task_delta(s).detach().to(torch.float64)
            state[f"{name}.weight"] = w.to(module.base.weight.dtype).cpu()
    weight, bias, _, _ = export_head(run)
    state["head.weight"] = weight.detach().cpu().clone()
    state["head.bias"] = bias.detach().cpu().clone()
    return {k: v.contiguous() for k, v in state.items()}


@torch.no_grad()
def export_head(run: LoadedRun) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
    """(timm ``head`` weight, bias, tensors applied after it, sidecar description) of the run's classifier.

    * ``ca``: the concatenated aligned heads; the model's output are the logits.
    * ``ncm``: the L2-normalised class means as weights, no bias: output ‖f‖·cos(f, μ_c) for the pre-logits
      feature f, which has the same argmax as the cosines (divide by ‖f‖ to get them).
    * ``ridge``: the random projection Wᵀ (M × d) as the head, so the model outputs f W; the ridge weights β
      (C × M) go to ``<out>.ridge.safetensors``: logits = ReLU(model(x)) βᵀ. Without a projection
      (``classifier.rp_dim=0``) β is itself the head.
    """
    from ..classifiers.ncm import CosineHead
    from ..classifiers.ridge import RidgeHead

    head = run.model.head
    if isinstance(head, CosineHead):
        w = head.weight
        return w, torch.zeros(w.shape[0]), {}, {
            "kind": "ncm", "logits": "model(x) = |f| * cos(f, class mean): its argmax is the prediction; divide "
            "by |f| (forward_head(..., pre_logits=True)) for the cosines"}
    if isinstance(head, RidgeHead):
        if not head.has_projection:
            w = head.weight
            return w, torch.zeros(w.shape[0]), {}, {"kind": "ridge", "logits": "model(x)"}
        w = head.projection.T.contiguous()
        return w, torch.zeros(w.shape[0]), {"weight": head.weight.contiguous()}, {
            "kind": "ridge", "random_features": int(w.shape[0]),
            "logits": "relu(model(x)) @ weight.T with weight (classes x random_features) from the file"}
    weight, bias = run.model.cil.heads.concatenated()
    return weight, bias, {}, {"kind": "ca", "logits": "model(x)"}


def _check_timm_keys(tag: str, kwargs: dict[str, Any], num_classes: int, state: dict[str, torch.Tensor]) -> None:
    import timm

    with torch.device("meta"):
        ref = timm.create_model(tag, pretrained=False, num_classes=num_classes, **kwargs).state_dict()
    want = {k: tuple(v.shape) for k, v in ref.items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise RuntimeError(f"exported state does not match timm {tag}: {diff[:5]}")


def export_run(run_dir: str | Path, out_file: str | Path, task: int | None = None, force: bool = False) -> Path:
    """Write the run as one plain timm model (``out_file``, safetensors) plus ``<out>.json`` describing it.

    The JSON sidecar holds what is needed without sr2lora: timm name and kwargs, how to load the file, input
    size, the test transform, class names, the run's accuracies and the weights' sha256. Returns the path of the
    weights file. Existing files are replaced only with ``force`` (``--force``); otherwise nothing is written. The
    files are written together (:func:`sr2lora.core.atomic.atomic_paths`): an interrupt or a full disk leaves the
    old ones (or none), never new weights beside an old sidecar.
    """
    from .. import __version__
    from ..core.cache import file_sha256

    out = Path(out_file)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"--out {out}: the exported file must end in .safetensors")
    sidecar_file, ridge_file = out.with_suffix(".json"), out.with_suffix(".ridge.safetensors")
    run = load_run(run_dir, task=task)
    folders = [p for p in (out, sidecar_file, ridge_file) if p.is_dir()]
    if folders:
        raise OutputError(f"--out {out}: {folders[0]} is a folder, not a file; give a file name ending in "
                          f".safetensors (nothing was written)")
    existing = [p for p in (out, sidecar_file, ridge_file) if p.exists()]
    if existing and not force:
        raise CheckpointError(
            f"--out {out}: {', '.join(str(p) for p in existing)} already exist(s); nothing was written. Choose "
            f"another --out or add --force to replace them"
        )
    cfg, results = run.config, run.results
    tag, kwargs = timm_architecture(cfg)
    state = folded_state_dict(run)
    num_classes = len(run.class_names)
    head_out = int(state["head.weight"].shape[0])  # = num_classes, except the ridge head's random features
    _check_timm_keys(tag, kwargs, head_out, state)
    _, _, after, how = export_head(run)
    if after:  # what the classifier applies after the timm model's output (the ridge weights)
        how["file"] = ridge_file.name

    import timm

    t, size = run.task, cfg.data.image_size
    sidecar = {
        "format": EXPORT_FORMAT,
        "weights": out.name,
        "weights_sha256": None,  # filled in once the weights are written
        "timm_model": tag,
        "timm_kwargs": kwargs,
        "num_classes": num_classes,
        "load": {  # timm.create_model(timm_model, **load, **timm_kwargs); num_classes in the overlay keeps the head
            "pretrained": True,
            "num_classes": head_out,
            "pretrained_cfg_overlay": {"file": out.name, "num_classes": head_out},
        },
        "classifier": how,  # how the model's output becomes the logits (sr2lora.inference.export.export_head)
        "input_size": [3, size, size],
        "precision": "fp32",  # the model computes in float32, as the run's evaluation did
        "train_precision": results.get("precision"),
        "transform": run.transform_spec,
        "class_names": run.class_names,
        "task": t,
        "num_tasks": run.num_tasks,
        "task_offsets": results["task_offsets"][: t + 2],
        "source_run": str(Path(run_dir).resolve()),
        "method": cfg.method.name,
        "backbone": cfg.model.backbone,
        "eval_split": results.get("eval_split"),
        "accuracy": {
            "final_acc": results.get("final_acc"),
            "avg_acc": results.get("avg_acc"),
            "accuracy_matrix": results.get("accuracy_matrix"),
            "acc_after_task": (results.get("acc_curve") or [None] * (t + 1))[t],
        },
        "versions": {"sr2lora": __version__, "torch": torch.__version__, "timm": timm.__version__},
    }
    targets = [out, sidecar_file, *([ridge_file] if after else [])]
    for stale in leftover_temps(out.parent) if out.parent.is_dir() else []:  # of an export killed mid-write
        if any(stale.name.startswith(temp_prefix(p)) for p in (out, sidecar_file, ridge_file)):
            stale.unlink(missing_ok=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_paths(targets) as temps:
            save_safetensors(state, temps[0], metadata={"format": "pt", "producer": f"sr2lora {__version__}"})
            if after:
                save_safetensors(after, temps[2])
            sidecar["weights_sha256"] = file_sha256(temps[0])
            temps[1].write_text(json.dumps(json_safe(sidecar), indent=2, allow_nan=False), encoding="utf-8")
        if not after and ridge_file.exists():  # --force over a ridge export: its weights belong to no file now
            ridge_file.unlink()
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        kept = "the existing files are unchanged" if existing else "no file was left"
        raise OutputError(f"export: cannot write {exc.filename or out.parent}: {exc.strerror}; {kept}. Free space or "
                          f"choose another --out") from exc
    return out
