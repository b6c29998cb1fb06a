"""Cost of the ``ridge`` classifier (RanPAC's head): accumulating the statistics and solving, per task.

One task of the ridge head costs: φ = ReLU(f W) for the task's N training features (N × d × M), the Gram update
G += φᵀφ (N × M², float64) and, in ``finish_task``, one eigendecomposition of G_fit (M × M) for the λ grid and one
Cholesky solve of (G + λI) β = C. Memory: two M × M float64 matrices (G_fit, G_val), 8·M² bytes each, also in
the checkpoint. Synthetic features; the timings do not depend on their values.

    python benchmarks/ridge.py --rp-dim 2000 --dim 384 --samples 160 --classes 40   # clip-art, last task
    python benchmarks/ridge.py --rp-dim 10000 --dim 768 --samples 2000 --classes 200  # paper (ViT-B, M = 10k)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from results_io import write_result  # noqa: E402

from sr2lora.classifiers import create_classifier  # noqa: E402
from sr2lora.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Time fit_task and finish_task of one task; print and write JSON; return the result."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rp-dim", type=int, default=2000, help="M, the random-projection size")
    p.add_argument("--dim", type=int, default=384, help="feature size d")
    p.add_argument("--samples", type=int, default=160, help="training features in the task (N)")
    p.add_argument("--classes", type=int, default=40, help="classes seen after the task")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="output (default benchmarks/results/ridge-M<M>.json)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = load_config(None, {"classifier": {"kind": "ridge", "rp_dim": args.rp_dim}})
    offsets = [0, args.classes]
    clf = create_classifier(cfg, args.dim, offsets)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, args.dim, generator=g)
    y = torch.randint(0, args.classes, (args.samples,), generator=g)
    t0 = time.perf_counter()
    clf.fit_task(0, x, y, list(range(args.classes)))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf.finish_task(0, None, seed=0)
    solve_s = time.perf_counter() - t0
    m = clf.m
    result = {
        "rp_dim": args.rp_dim, "dim": args.dim, "samples": args.samples, "classes": args.classes,
        "lambdas": len(clf.lambdas), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "fit_task_s": fit_s, "finish_task_s": solve_s, "gram_mib": 8 * m * m / 2**20,
        "state_mib": sum(v.numel() * v.element_size() for v in clf.state_tensors().values()) / 2**20,
    }
    print(f"ridge head, M = {m}, d = {args.dim}, N = {args.samples} features, {args.classes} classes, "
          f"{len(clf.lambdas)} λ, {result['threads']} threads")
    print(f"  statistics (φ, G += φᵀφ, C += φᵀy)     {fit_s:8.3f} s")
    print(f"  λ selection + solve (eigh, Cholesky)  {solve_s:8.3f} s")
    print(f"  one M × M float64 matrix {result['gram_mib']:.1f} MiB; checkpoint state {result['state_mib']:.1f} MiB")
    write_result(result, args.json, f"ridge-M{args.rp_dim}.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
