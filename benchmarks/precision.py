"""fp32 vs bf16 autocast for one training step, side by side on this CPU (or GPU), with the rule ``auto`` applies.

bf16 pays only where the hardware computes it (AVX512-BF16, AMX, a CUDA GPU with bf16); elsewhere oneDNN emulates
it. The same model and batch run one ``sr2lora`` training step in each precision, interleaved, ``--repeats``
times; the table gives medians and the ratio bf16 / fp32 (> 1: bf16 is slower), and says what
``train.precision=auto`` picks here (:mod:`sr2lora.core.hardware`).

    python benchmarks/precision.py                       # ViT-S/14 at the demo's 56 px, batch 32
    python benchmarks/precision.py --backbone micro      # seconds
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402
from step import Variant, build_bench  # noqa: E402

from sr2lora.core.hardware import probe, resolve_precision  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="imgfocus", help="micro | imgfocus | a timm model name (random init)")
    p.add_argument("--img-size", type=int, default=None, help="px (micro 32, imgfocus 56)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tasks", type=int, default=6, help="past tasks before the timed one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="output (default benchmarks/results/precision-<backbone>.json)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    args.img_size = args.img_size or (32 if args.backbone == "micro" else 56)
    args.compile, args.precision = False, "fp32"
    bench = build_bench(args)
    device = bench.device
    variant = Variant("sr2lora", bench)

    def bf16():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for autocast in (nullcontext, bf16):  # one untimed warm-up step each
        bench.autocast = autocast
        variant.step()
    for _ in range(args.repeats):
        for name, autocast in (("fp32", nullcontext), ("bf16", bf16)):
            bench.autocast = autocast
            times[name].append(variant.step()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    caps = probe(device)
    result = {"backbone": args.backbone, "img_size": args.img_size, "batch": args.batch, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__,
              "times_s": times, "median_s": med, "bf16_over_fp32": med["bf16"] / med["fp32"],
              "auto_picks": resolve_precision("auto", caps)[0], "native_bf16": caps.native_bf16}
    print(f"{args.backbone} @ {args.img_size} px, batch {args.batch}, one sr2lora training step, {device} "
          f"({result['threads']} threads, CPU capability {caps.cpu_capability}, native bf16: {caps.native_bf16})")
    print(f"fp32 {med['fp32']:.3f} s, bf16 {med['bf16']:.3f} s (median of {args.repeats}): bf16/fp32 "
          f"{result['bf16_over_fp32']:.2f}; train.precision=auto picks {result['auto_picks']} here")
    write_result(result, args.json, f"precision-{args.backbone}.json")
    return result


if __name__ == "__main__":
    main()
