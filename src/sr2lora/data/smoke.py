"""`smoke`: a small generated dataset a micro ViT learns in seconds (tests and quick checks, not the demo).

Each class is a colour (20 hues) crossed with a stripe orientation, drawn with random phase, jitter and
noise, so a classifier must look at the image rather than memorise pixels.
"""

from __future__ import annotations

import colorsys

import numpy as np

from .base import ArrayImages, DatasetBundle
from .registry import register_dataset

SMOKE_CLASSES = 20
SMOKE_SIZE = 32


def make_smoke_images(
    num_classes: int, per_class: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,size,size,3), labels) with ``per_class`` images of each class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images, labels = [], []
    for c in range(num_classes):
        hue = (c * 7 % num_classes) / num_classes
        color = np.array(colorsys.hsv_to_rgb(hue, 0.9, 0.95), dtype=np.float32)
        angle = (c % 4) * np.pi / 4
        for _ in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            freq = 6 + rng.uniform(-1, 1)
            a = angle + rng.normal(0, 0.1)
            stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(a) * xx + np.sin(a) * yy) + phase)
            img = stripes[..., None] * color[None, None, :] + (1 - stripes[..., None]) * 0.15
            img = img + rng.normal(0, 0.06, img.shape)
            images.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


@register_dataset("smoke")
def build_smoke(cfg) -> DatasetBundle:
    """20 classes × (40 train, 12 test) images of 32 px; seeded by ``data.split_seed``."""
    xtr, ytr = make_smoke_images(SMOKE_CLASSES, 40, SMOKE_SIZE, seed=1000 + cfg.split_seed)
    xte, yte = make_smoke_images(SMOKE_CLASSES, 12, SMOKE_SIZE, seed=2000 + cfg.split_seed)
    names = [f"hue{c * 7 % SMOKE_CLASSES:02d}-angle{(c % 4) * 45}" for c in range(SMOKE_CLASSES)]
    return DatasetBundle(
        train=ArrayImages(xtr, ytr, "smoke/train"),
        test=ArrayImages(xte, yte, "smoke/test"),
        class_names=names,
        info={"source": "generated in code (sr2lora.data.smoke)", "train": len(ytr), "test": len(yte)},
    )
