"""The same checkpoint evaluated on the CPU and on a CUDA device: how far float32 evaluation moves between them.

sr2lora evaluates in float32 on every device (``sr2lora.core.hardware.EVAL_PRECISION``; on CUDA without TF32), so a run
reloaded on another machine differs only by the kernels' rounding and reduction order. For each run folder this
reloads the final model on both devices, runs every evaluation image of the run (``--max-images`` caps it) and
reports the largest logit difference relative to the largest logit, the predictions that changed, and both
accuracies beside the reported one (equal on the device the run evaluated on when every image is used).
``benchmarks/gpu.sh`` runs it on the runs it trains; the README states the tolerance it measured.

    python benchmarks/cross_device.py RUN [RUN ...] [--max-images N] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402
from synthetic_run import register  # noqa: E402

from sr2lora import load_run  # noqa: E402
from sr2lora.data.run_data import prepare_data  # noqa: E402
from sr2lora.methods import get_method_class  # noqa: E402


@torch.no_grad()
def logits_on(run_dir: Path, device: str, x: torch.Tensor, batch: int) -> torch.Tensor:
    run = load_run(run_dir, device=device)
    return torch.cat([run.model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


def compare(run_dir: Path, max_images: int, batch: int) -> dict:
    """One run's CPU-vs-CUDA comparison (the keys the README quotes)."""
    run = load_run(run_dir)
    data = prepare_data(run.config, single_task=get_method_class(run.config.method.name).single_task)
    n = min(len(data.eval_labels), max_images) if max_images > 0 else len(data.eval_labels)
    x = torch.stack([run.transform(data.eval_images.load(int(data.eval_index[i]))) for i in range(n)])
    y = data.eval_labels[:n]
    cpu, cuda = logits_on(run_dir, "cpu", x, batch), logits_on(run_dir, "cuda", x, batch)
    dev = float((cpu - cuda).abs().max())
    scale = float(cpu.abs().max())
    acc = {k: 100.0 * float(np.mean(v.argmax(-1).numpy() == y)) for k, v in (("cpu", cpu), ("cuda", cuda))}
    return {"run": str(run_dir), "images": n, "all_images": n == len(data.eval_labels),
            "trained_on": run.results.get("device_type"), "train_precision": run.results.get("precision"),
            "max_abs_logit_diff": dev, "max_abs_logit": scale, "relative": dev / max(scale, 1e-30),
            "predictions_changed": int((cpu.argmax(-1) != cuda.argmax(-1)).sum()),
            "accuracy": acc, "reported_final_acc": run.results.get("final_acc")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="finished run folders")
    p.add_argument("--max-images", type=int, default=0, help="evaluation images per run (0: all)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json", default=None, help="output (default benchmarks/results/cross-device.json)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("cross_device.py: no CUDA device visible to torch")
    register(40, 10)  # the synthetic dataset of benchmarks/synthetic_run.py, for its runs
    rows = [compare(Path(r), args.max_images, args.batch) for r in args.runs]
    for r in rows:
        print(f"{r['run']}: {r['images']} images, max |Δlogit| {r['max_abs_logit_diff']:.2e} of "
              f"{r['max_abs_logit']:.3g} ({r['relative']:.1e} relative), {r['predictions_changed']} predictions "
              f"changed; accuracy cpu {r['accuracy']['cpu']:.2f} / cuda {r['accuracy']['cuda']:.2f} "
              f"(reported {r['reported_final_acc']})")
    result = {"device_name": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": rows,
              "max_relative": max(r["relative"] for r in rows)}
    write_result(result, args.json, "cross-device.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
