"""Building a run's model and transforms from its config: the one recipe training and every reload share.

``build_model`` wraps the frozen backbone named by ``model.backbone`` with LoRA (when the method uses it) and
heads; :func:`rebuild_model` does it under the run's backbone seed, as the engine does, so that a run with
``model.pretrained=false`` (the smoke preset) gets the same random backbone back. Reading weights files happens in
:mod:`sr2lora.models.backbone`; nothing here touches a run folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..core.seeding import BACKBONE_TASK, task_seed

if TYPE_CHECKING:
    from torch import nn

    from .backbone import CILModel


def backbone_mean_std(vit: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the backbone's pre-trained config names (``data.normalize=backbone``), or None."""
    pc = getattr(vit, "pretrained_cfg", None) or {}
    if "mean" in pc and "std" in pc:
        return tuple(pc["mean"]), tuple(pc["std"])
    return None


def run_transforms(cfg: RunConfig, vit: nn.Module) -> tuple[Any, Any, Any]:
    """(mean/std or None, train transform, test transform) of a run with backbone ``vit`` (``data.*``)."""
    from ..data.transforms import build_transforms, normalization

    d = cfg.data
    mean_std = normalization(d.normalize, backbone_mean_std(vit))
    train_tf, test_tf = build_transforms(d.image_size, d.train_scale, d.train_ratio, d.hflip, d.resize_ratio,
                                         mean_std)
    return mean_std, train_tf, test_tf


def build_model(cfg: RunConfig, uses_lora: bool) -> CILModel:
    """The frozen backbone named by ``model.backbone`` wrapped with LoRA (when the method uses it) and heads."""
    from ..models.backbone import CILModel, create_vit

    m = cfg.model
    vit = create_vit(m.backbone, m.pretrained, img_size=cfg.data.image_size, timm_kwargs=m.timm_kwargs)
    return CILModel(vit, rank=m.rank, targets=m.lora_targets, use_lora=uses_lora)


def rebuild_model(cfg: RunConfig, uses_lora: bool) -> CILModel:
    """:func:`build_model` under the run's backbone seed, as the engine builds it, leaving the caller's random
    state untouched (no task yet)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task_seed(cfg.seed, BACKBONE_TASK))
        return build_model(cfg, uses_lora)
