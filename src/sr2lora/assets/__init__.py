"""Build once what a preset reads from the cache: converted backbone weights and rendered datasets.

``sr2lora assets --preset P`` (which ``make demo`` and ``make test`` run) and the demo, before it starts parallel
runs, call :func:`prepare_assets`: two processes that both found the cache empty would each convert the weights
and render the images. Training itself only reads what is cached here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import RunConfig


def prepare_assets(cfg: RunConfig, say: Callable[[str], None] = print) -> list[str]:
    """Make sure the backbone weights and the dataset of ``cfg`` are cached; returns what was done, one line each.

    Reading a warm cache takes seconds: the dataset builder and the weight loader verify what they find.
    """
    from ..data import build_dataset
    from ..models.backbone import IMGFOCUS_BACKBONE

    done = []
    if cfg.model.backbone == IMGFOCUS_BACKBONE and cfg.model.pretrained is True:
        from ..models.imgfocus import ensure_vits14_weights

        t0 = time.perf_counter()
        path = ensure_vits14_weights()
        done.append(f"backbone {IMGFOCUS_BACKBONE}: {path} ({time.perf_counter() - t0:.0f}s)")
        say(done[-1])
    t0 = time.perf_counter()
    bundle = build_dataset(cfg.data)
    done.append(f"dataset {cfg.data.dataset}: {bundle.num_classes} classes, {len(bundle.train)} train / "
                f"{len(bundle.test)} test images ({time.perf_counter() - t0:.0f}s)")
    say(done[-1])
    return done
