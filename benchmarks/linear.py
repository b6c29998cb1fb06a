"""oneDNN's fused linear (+GELU) vs ``F.linear`` (+``F.gelu``) for a ViT's shapes, side by side on this CPU.

The gradient-free passes (previous model, statistics, evaluation) use the fused kernel only where it is faster:
``sr2lora.models.fastpath.onednn_preferred`` picks it on AVX-512 CPUs. This benchmark is the measurement behind
that rule; run it on a new kind of CPU before changing it. Interleaved repeats, median process CPU time and wall
time per call, ratio fused / plain (> 1: the fused kernel is slower).

    python benchmarks/linear.py                 # ViT-S/14 at the demo's 56 px and at 84 px, batch 32
    python benchmarks/linear.py --dim 768       # ViT-B widths
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402

from sr2lora.models.fastpath import onednn_available, onednn_preferred  # noqa: E402


def shapes(dim: int, tokens: list[int], batch: int) -> list[tuple[int, int, int, str | None]]:
    """(rows, in, out, gelu) of a ViT block's qkv, fc1 (+GELU), fc2 and proj for each token count."""
    out = []
    for n in tokens:
        rows = batch * n
        out += [(rows, dim, 3 * dim, None), (rows, dim, 4 * dim, "none"), (rows, 4 * dim, dim, None),
                (rows, dim, dim, None)]
    return out


def time_call(fn, repeats: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--tokens", default="17,37", help="tokens per image (ViT-S/14: 56 px → 17, 84 px → 37)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="output (default benchmarks/results/linear.json)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not onednn_available():
        raise SystemExit("this torch build has no oneDNN fused linear: nothing to compare")
    op = torch.ops.mkldnn._linear_pointwise
    torch.manual_seed(0)
    rows_out = []
    with torch.no_grad():
        for rows, din, dout, gelu in shapes(args.dim, [int(t) for t in args.tokens.split(",")], args.batch):
            x, w, b = torch.randn(rows, din), torch.randn(dout, din) / din**0.5, torch.randn(dout)

            def fused(x=x, w=w, b=b, gelu=gelu):
                return op(x, w, b, "none", [], "") if gelu is None else op(x, w, b, "gelu", [], gelu)

            def plain(x=x, w=w, b=b, gelu=gelu):
                y = F.linear(x, w, b)
                return y if gelu is None else F.gelu(y, approximate=gelu)

            torch.testing.assert_close(fused(), plain(), rtol=1e-4, atol=1e-4)
            fw, fc, pw, pc = [], [], [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                a, c = time_call(fused, 1)
                fw += a
                fc += c
                a, c = time_call(plain, 1)
                pw += a
                pc += c
            row = {"rows": rows, "in": din, "out": dout, "gelu": gelu,
                   "fused_ms": 1e3 * statistics.median(fw), "plain_ms": 1e3 * statistics.median(pw),
                   "fused_cpu_ms": 1e3 * statistics.median(fc), "plain_cpu_ms": 1e3 * statistics.median(pc)}
            row["ratio"] = row["fused_ms"] / row["plain_ms"]
            row["cpu_ratio"] = row["fused_cpu_ms"] / row["plain_cpu_ms"]
            rows_out.append(row)
    total = {k: sum(r[k] for r in rows_out) for k in ("fused_ms", "plain_ms", "fused_cpu_ms", "plain_cpu_ms")}
    result = {"dim": args.dim, "batch": args.batch, "threads": torch.get_num_threads(), "repeats": args.repeats,
              "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "fused_used_here": onednn_preferred(), "shapes": rows_out,
              "total_ratio": total["fused_ms"] / total["plain_ms"],
              "total_cpu_ratio": total["fused_cpu_ms"] / total["plain_cpu_ms"]}
    print(f"CPU capability {result['cpu_capability']}, {result['threads']} threads, median of {args.repeats}")
    print(f"{'rows':>6s} {'in':>5s} {'out':>5s} {'gelu':>5s} {'fused ms':>9s} {'plain ms':>9s} {'ratio':>6s} "
          f"{'cpu ratio':>9s}")
    for r in rows_out:
        print(f"{r['rows']:6d} {r['in']:5d} {r['out']:5d} {str(r['gelu'] or '-'):>5s} {r['fused_ms']:9.2f} "
              f"{r['plain_ms']:9.2f} {r['ratio']:6.2f} {r['cpu_ratio']:9.2f}")
    print(f"all shapes: fused/plain time {result['total_ratio']:.3f}, cpu time {result['total_cpu_ratio']:.3f}; "
          f"the fast path {'uses' if result['fused_used_here'] else 'does not use'} the fused kernel on this CPU")
    write_result(result, args.json, "linear.json")
    return result


if __name__ == "__main__":
    main()
