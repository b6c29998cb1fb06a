"""Classifier-alignment sampling: the cached Cholesky factor vs a sampler rebuilt every epoch (the reference).

One CA epoch draws ``samples_factor × batch`` (default 5 × 128 = 640) features of every seen class from
N(μ_c, Σ_c). ``cached`` is :meth:`sr2lora.classifiers.gaussians.ClassGaussians.sample`: the Cholesky factors were computed
once when the class statistics were (float64, stored float32), the stack of all classes' means and Lᵀ is built
on an alignment's first epoch and reused by the others, and an epoch is one fused batched matmul μ + z Lᵀ
(``torch.baddbmm``) for all classes. ``rebuilt`` is what the reference does every epoch: for each class, build a
``torch.distributions.MultivariateNormal(μ_c, covariance_matrix=Σ_c)`` (argument validation and a Cholesky)
and ``sample((n,))`` from it. Both start from the same statistics (Σ_c = L Lᵀ of the cached factor).

    python benchmarks/ca.py                  # 200 classes × 768-d (ViT-B), 640 samples per class
    python benchmarks/ca.py --quick          # 40 classes × 768-d (make bench)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from results_io import write_result  # noqa: E402

from sr2lora.classifiers.gaussians import ClassGaussians  # noqa: E402


def make_gaussians(classes: int, dim: int, per_class: int, seed: int = 0) -> ClassGaussians:
    """Class statistics of synthetic features: ``per_class`` anisotropic samples of each class."""
    g = torch.Generator().manual_seed(seed)
    gauss = ClassGaussians(dim)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5
    for c in range(classes):
        x = torch.randn(per_class, dim, generator=g) @ mix + 3 * torch.randn(dim, generator=g)
        gauss.add_classes(x, torch.full((per_class,), c), [c], shrink=0.01)
    return gauss


def rebuilt_sample(
    means: list[torch.Tensor], covs: list[torch.Tensor], n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's epoch: a new MultivariateNormal per class, ``n`` samples each; (C·n, d), labels."""
    xs, ys = [], []
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    for c, (mu, cov) in enumerate(zip(means, covs)):
        dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
        xs.append(dist.sample((n,)))
        ys.append(torch.full((n,), c))
    torch.random.set_rng_state(torch_state)
    return torch.cat(xs), torch.cat(ys)


def main(argv: list[str] | None = None) -> dict:
    """Time both samplers (interleaved epochs, median); print and write JSON; return the result."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--samples", type=int, default=640, help="samples per class per epoch (5 × batch 128)")
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per sampler (interleaved)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="40 classes (make bench)")
    p.add_argument("--json", default=None, help="output (default benchmarks/results/ca[-quick].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.classes, args.repeats = min(args.classes, 40), min(args.repeats, 3)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    gauss = make_gaussians(args.classes, args.dim, per_class=max(50, args.dim // 8))
    stats_s = time.perf_counter() - t0
    classes = list(range(args.classes))
    means = [gauss.means[c] for c in classes]
    covs = [gauss.chols[c] @ gauss.chols[c].T for c in classes]  # Σ = L Lᵀ: the same distribution
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"cached": [], "rebuilt": []}
    gauss.sample(classes[:2], 8, gen)  # warm-up
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        x, _ = gauss.sample(classes, args.samples, gen)
        times["cached"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        x, _ = rebuilt_sample(means, covs, args.samples, gen)
        times["rebuilt"].append(time.perf_counter() - t0)
    del x
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "classes": args.classes, "dim": args.dim, "samples_per_class": args.samples, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "statistics_s": stats_s,
        "epoch_s": med, "times_s": times, "speedup": med["rebuilt"] / med["cached"],
    }
    print(f"CA sampling, {args.classes} classes × {args.dim}-d, {args.samples} samples per class per epoch, "
          f"{result['threads']} threads, median of {args.repeats} epochs")
    print(f"  cached Cholesky (ClassGaussians.sample)  {med['cached']:8.3f} s/epoch")
    print(f"  MultivariateNormal rebuilt every epoch   {med['rebuilt']:8.3f} s/epoch")
    print(f"  speed-up {result['speedup']:.1f}x")
    write_result(result, args.json, f"ca{'-quick' if args.quick else ''}.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
