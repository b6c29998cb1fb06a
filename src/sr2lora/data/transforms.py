"""Image transforms: the reference's (no normalisation) by default, optional mean/std normalisation.

Train: RandomResizedCrop(size, scale, ratio) + horizontal flip + ToTensor.
Test:  Resize(size · resize_ratio, bicubic) + CenterCrop(size) + ToTensor.
The reference feeds ``ToTensor()`` outputs to the ViT without mean/std normalisation; ``data.normalize`` adds it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(kind: str, backbone_mean_std: tuple[Sequence[float], Sequence[float]] | None = None):
    """Return (mean, std) for ``data.normalize`` or None for the reference's un-normalised inputs."""
    if kind == "none":
        return None
    if kind == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if kind == "backbone":
        return backbone_mean_std or (IMAGENET_MEAN, IMAGENET_STD)
    raise ValueError(f"data.normalize: unknown value {kind!r}")


def build_transforms(
    size: int,
    train_scale: Sequence[float] = (0.05, 1.0),
    train_ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    resize_ratio: float = 256 / 224,
    mean_std: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms mapping a PIL image to a float tensor (3, size, size)."""
    tail: list = [T.ToTensor()]
    if mean_std is not None:
        tail.append(T.Normalize(mean=list(mean_std[0]), std=list(mean_std[1])))
    train = [T.RandomResizedCrop(size, scale=tuple(train_scale), ratio=tuple(train_ratio))]
    if hflip:
        train.append(T.RandomHorizontalFlip())
    test = [
        T.Resize(int(round(size * resize_ratio)), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
    ]
    return T.Compose(train + tail), T.Compose(test + tail)


def transform_spec(
    size: int, resize_ratio: float, mean_std: tuple[Sequence[float], Sequence[float]] | None
) -> dict:
    """A JSON description of the test transform, enough to rebuild it without this package."""
    return {
        "resize": int(round(size * resize_ratio)),
        "interpolation": "bicubic",
        "center_crop": size,
        "to_tensor": True,
        "mean": list(mean_std[0]) if mean_std else None,
        "std": list(mean_std[1]) if mean_std else None,
    }
