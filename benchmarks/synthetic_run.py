"""An end-to-end run on synthetic CIFAR-100-shaped data: 100 classes of random 32×32 images, 2 tasks of 50.

For throughput on a new machine (benchmarks/gpu.sh) without any dataset on disk: registers the dataset
``synthetic-cifar100`` in this process and calls ``sr2lora run`` with the overrides given. Prints the run's
seconds, training images/s and, on CUDA, the peak GPU memory.

    python benchmarks/synthetic_run.py --out /tmp/synth model.backbone=vit_base_patch16_224.augreg_in21k ...
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from sr2lora.data.base import ArrayImages, DatasetBundle  # noqa: E402
from sr2lora.data.registry import dataset_names, register_dataset  # noqa: E402

CLASSES = 100


def register(train_per_class: int, test_per_class: int) -> None:
    """Register ``synthetic-cifar100``: uint8 noise images with a class-dependent mean colour (learnable)."""
    if "synthetic-cifar100" in dataset_names():
        return

    @register_dataset("synthetic-cifar100")
    def build(cfg) -> DatasetBundle:
        rng = np.random.default_rng(cfg.split_seed)
        colours = rng.integers(40, 216, size=(CLASSES, 3))

        def make(per_class: int) -> tuple[np.ndarray, np.ndarray]:
            y = np.repeat(np.arange(CLASSES), per_class)
            x = rng.normal(0, 40, size=(len(y), 32, 32, 3)) + colours[y][:, None, None, :]
            return np.clip(x, 0, 255).astype(np.uint8), y

        (xtr, ytr), (xte, yte) = make(train_per_class), make(test_per_class)
        train, test = ArrayImages(xtr, ytr, "synthetic/train"), ArrayImages(xte, yte, "synthetic/test")
        names = [f"class{c:03d}" for c in range(CLASSES)]
        return DatasetBundle(train, test, names, {"source": "synthetic (benchmarks)"})


def main(argv: list[str] | None = None) -> int:
    """Run; return the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    register(args.train_per_class, args.test_per_class)
    from sr2lora.cli import main as cli_main

    overrides = ["data.dataset=synthetic-cifar100", "scenario.init_cls=50", "scenario.increment=50",
                 "data.resize_ratio=1.0", *args.overrides]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = cli_main(["run", "--preset", "smoke", "--quiet", "--out", args.out, *overrides])
    wall = time.perf_counter() - t0
    if rc != 0:
        return rc
    r = json.loads((Path(args.out) / "results.json").read_text())
    epochs = int(yaml.safe_load((Path(args.out) / "config.yaml").read_text())["train"]["epochs"])
    images = CLASSES * args.train_per_class * epochs
    print(f"synthetic run: {r['num_tasks']} tasks, {wall:.1f}s wall ({r['seconds']:.1f}s in tasks: "
          f"{', '.join(f'{s:.1f}' for s in r['task_seconds'])}), about {images / r['seconds']:.0f} training "
          f"images/s including statistics, alignment and evaluation")
    if torch.cuda.is_available():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
