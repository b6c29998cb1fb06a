"""Build once what a preset reads from the cache: converted backbone weights and rendered datasets.

``sr2lora assets --preset P`` (which ``make assets``, ``make test`` and ``make demo`` run) and the demo, before
it starts its runs, call :func:`prepare_assets`. Everything else only reads the cache: the backbone loader
(:mod:`sr2lora.models.imgfocus`) and the dataset builders (:mod:`sr2lora.data.openclipart`, ``xdomain``) raise
an :class:`~sr2lora.core.errors.AssetsError` naming this command when what they need is missing. Building lives here
so that two processes that found the cache empty never each convert the weights or render the images, and so
that the converters' dependencies (the ``assets`` extra: onnx, cairosvg) are needed by this command only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import DataConfig, RunConfig


def _openclipart(cfg: DataConfig) -> str:
    from .openclipart import build_for_config

    return build_for_config(cfg)


def _xdomain(cfg: DataConfig) -> str:
    from ..data.xdomain import clipart_root
    from .openclipart import build_for_config

    return build_for_config(cfg, root=clipart_root(cfg.root))


# data.dataset -> what builds that dataset's cache (datasets not listed read their files as they are)
DATASET_ASSETS: dict[str, Callable[[DataConfig], str]] = {
    "openclipart": _openclipart,
    "xdomain": _xdomain,
}


def prepare_assets(cfg: RunConfig, say: Callable[[str], None] = print) -> list[str]:
    """Make sure the backbone weights and the dataset of ``cfg`` are cached; returns what was done, one line each.

    What is already cached is verified, not rebuilt, so a warm cache takes seconds; the dataset is then built
    the way a run builds it, which checks that a run will find everything.
    """
    from ..data import build_dataset
    from ..models.backbone import IMGFOCUS_BACKBONE

    done = []
    if cfg.model.backbone == IMGFOCUS_BACKBONE and cfg.model.pretrained is True:
        from .imgfocus import ensure_vits14_weights

        t0 = time.perf_counter()
        path = ensure_vits14_weights()
        done.append(f"backbone {IMGFOCUS_BACKBONE}: {path} ({time.perf_counter() - t0:.0f}s)")
        say(done[-1])
    builder = DATASET_ASSETS.get(cfg.data.dataset)
    if builder is not None:
        done.append(builder(cfg.data))
        say(done[-1])
    t0 = time.perf_counter()
    bundle = build_dataset(cfg.data)
    done.append(f"dataset {cfg.data.dataset}: {bundle.num_classes} classes, {len(bundle.train)} train / "
                f"{len(bundle.test)} test images ({time.perf_counter() - t0:.0f}s)")
    say(done[-1])
    return done
