"""Cost of one training step: ``seqlora`` vs ``sr2lora`` vs a ``naive`` SR²-LoRA step (the reference's way).

``seqlora`` and ``sr2lora`` run the engine's own :func:`sr2lora.train.step.training_step`, ``naive`` this file's
:func:`reference_step`, on the same model at task index ≥ 5 (six earlier tasks whose LoRA B factors are random and nonzero, folded), interleaved in one process, ``--repeats``
times each; the table gives the median wall-clock time, the fastest repeat and the median process CPU
time, and ratios of each, plus the paired ratio (median over repeats of the ratio of the two steps run back to
back): on a machine shared with other work the paired ratio, the fastest repeat (timeit's convention) and CPU
time estimate the step's own cost better than the ratio of medians.

- ``seqlora``: current model forward (folded past + branch t) + CE, backward, Adam step.
- ``sr2lora``: the same plus the previous model's forward (folded weight only, no autograd, from the same stem
  tokens, run first; on CPU with fused oneDNN linears, see ``sr2lora.models.fastpath``) and a batch of L×L
  symmetric eigenvalue problems.
- ``naive``: SR²-LoRA as the reference computes it: every forward sums all task branches (no folding,
  ``set_folding(False)``), every block runs in full, the previous model recomputes the stem, and its pass runs
  with autograd on over past branches that still require grad (a graph built and never used; their gradients
  are computed and never applied).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` around each variant's steps; on CPU each variant runs
in a fresh subprocess (``--child VARIANT``) that reports ``ru_maxrss`` (the process's peak RSS) and the step's
increment over the RSS right before its step loop (after one warm-up step; the kernel's peak-RSS counter is
reset there, ``/proc/self/clear_refs``, so model loading does not hide the step's peak, and glibc is told to
map every allocation ≥ 64 KiB separately so RSS follows live tensors). Memory ratios use the increment.

    python benchmarks/step.py --backbone imgfocus --img-size 112 --batch 32 --repeats 7
    python benchmarks/step.py --quick            # micro ViT, seconds (make bench)
    python benchmarks/step.py --backbone vit_base_patch16_224.augreg_in21k --batch 128 --precision bf16
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import AbstractContextManager, nullcontext  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from results_io import write_result  # noqa: E402

from sr2lora.config import load_config  # noqa: E402
from sr2lora.methods import Method, TaskContext, create_method  # noqa: E402
from sr2lora.models.backbone import IMGFOCUS_BACKBONE, CILModel, create_vit  # noqa: E402
from sr2lora.train.step import training_step  # noqa: E402

VARIANTS = ("seqlora", "sr2lora", "naive")


def reference_step(
    model: CILModel,
    method: Method,
    ctx: TaskContext,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    offset: int,
    *,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One step the reference's way, for comparison with the engine's :func:`training_step`.

    The current model from the stem; CE; then the previous model (branches 0..t−1) after it, recomputing the
    stem, with autograd on (with past branches that require grad it records a graph never used); the
    regulariser; backward; optimiser step. Returns (loss, ce, reg), detached.
    """
    t = ctx.task
    with autocast() if autocast is not None else nullcontext():
        tokens = model.embed(x)
        new = model(x, tasks=t + 1 if method.uses_lora else 0, heads=t + 1, layers=method.needs_layers,
                    logits=False, tokens=tokens)
        logits = model.heads.head_logits(new.feature, t)
        ce = F.cross_entropy(logits.float(), y - offset)
        old = model(x, tasks=t, layers=method.needs_layers, logits=False) if method.needs_old and t > 0 else None
        reg = method.regularizer(new, old, ctx)
    loss = ce if reg is None else ce + method.weight * reg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), ce.detach(), None if reg is None else reg.detach()


@dataclass
class Bench:
    """A model at task ``task`` with ``task`` earlier (folded) tasks, and one batch."""

    model: CILModel
    x: torch.Tensor
    y: torch.Tensor
    task: int
    offset: int
    device: torch.device
    autocast: Any


def backbone_spec(name: str) -> tuple[str, bool, dict, int, list[str]]:
    """(timm name, pretrained, timm kwargs, LoRA rank, targets) of ``micro``, ``imgfocus`` or a timm tag."""
    if name == "micro":
        m = load_config("smoke").model
        return m.backbone, False, dict(m.timm_kwargs), m.rank, list(m.lora_targets)
    if name == "imgfocus":
        return IMGFOCUS_BACKBONE, True, {}, 10, ["k", "v"]
    return name, False, {}, 10, ["k", "v"]


def build_bench(args: argparse.Namespace) -> Bench:
    """Model with ``args.tasks`` past tasks (random nonzero B, folded) + the current task; a random batch."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    name, pretrained, kwargs, rank, targets = backbone_spec(args.backbone)
    vit = create_vit(name, pretrained, img_size=args.img_size, timm_kwargs=kwargs)
    model = CILModel(vit, rank=rank, targets=targets).to(device)
    classes = 10
    with torch.no_grad():
        for _ in range(args.tasks):
            model.add_task(classes)
            for lora in model.loras:
                lora.B[-1].normal_(0, 0.02)
    model.add_task(classes)
    model.to(device)
    model.fold(args.tasks)
    model.train()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, classes, (args.batch,), device=device) + args.tasks * classes
    if args.compile:
        model.compile_backbone()
    bf16 = args.precision == "bf16"

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    return Bench(model, x, y, args.tasks, args.tasks * classes, device, autocast)


class Variant:
    """One step flavour: a method, its optimiser over task t's parameters, folding, old-pass autograd."""

    def __init__(self, name: str, bench: Bench) -> None:
        self.name, self.bench = name, bench
        self.method: Method = create_method("seqlora" if name == "seqlora" else "sr2lora", {}, 1.0)
        self.fold = name != "naive"
        self.old_grad = name == "naive"
        model = bench.model
        self.ctx = TaskContext(task=bench.task, model=model, device=bench.device, num_tasks=bench.task + 1)
        params = model.task_parameters(bench.task)
        self.opt = torch.optim.Adam(params, lr=1e-5)
        self.params = params
        self.cls_only = model.cls_only_last
        # The reference's past branches are parameters that still require grad (only the optimiser leaves them
        # out), so its previous-model pass records a graph; the naive step does the same.
        self.past = [p for s in range(bench.task) for p in model.lora_parameters(s)] if self.old_grad else []

    def step(self) -> tuple[float, float]:
        """One training step: (wall seconds, process CPU seconds)."""
        b = self.bench
        b.model.set_folding(self.fold)
        b.model.cls_only_last = self.fold and self.cls_only  # the reference runs every block in full
        for p in b.model.parameters():
            p.requires_grad_(False)
        for p in self.params + self.past:
            p.requires_grad_(True)
        for p in self.past:
            p.grad = None
        sync(b.device)
        t0, c0 = time.perf_counter(), time.process_time()
        step = reference_step if self.old_grad else training_step
        loss, _, _ = step(b.model, self.method, self.ctx, self.opt, b.x, b.y, b.offset, autocast=b.autocast)
        float(loss)
        sync(b.device)
        return time.perf_counter() - t0, time.process_time() - c0


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or platform.processor()."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """CPU memory of one variant in this fresh process: prints one JSON line."""
    bench = build_bench(args)
    v = Variant(args.child, bench)
    v.step()  # one-time allocations (kernel JIT caches, LAPACK workspace, optimiser state) are not the step's
    rss_before = _rss_mb()
    reset = _reset_peak_rss()
    for _ in range(max(2, args.mem_steps)):
        v.step()
    peak_total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    step_peak = _hwm_mb() if reset else peak_total
    print(json.dumps({"variant": args.child, "peak_rss_mb": peak_total, "rss_before_mb": rss_before,
                      "step_mb": step_peak - rss_before, "step_mb_maxrss": peak_total - rss_before,
                      "hwm_reset": reset}))


def cpu_memory(args: argparse.Namespace, argv: list[str]) -> dict[str, dict]:
    out = {}
    for name in args.variants:
        cmd = [sys.executable, __file__, *argv, "--child", name]
        # Every allocation of 64 KiB or more is its own mapping, returned to the system when freed, so RSS
        # follows the live tensors instead of what glibc keeps cached.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        res = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"memory child {name} failed:\n{res.stderr[-3000:]}")
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def cuda_memory(bench: Bench, variants: dict[str, Variant], steps: int) -> dict[str, dict]:
    out = {}
    for name, v in variants.items():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        v.opt.zero_grad(set_to_none=True)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            v.step()
        peak = torch.cuda.max_memory_allocated()
        out[name] = {"variant": name, "peak_alloc_mb": peak / 2**20, "before_mb": before / 2**20,
                     "step_mb": (peak - before) / 2**20}
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="micro", help="micro | imgfocus | a timm model name (random init)")
    p.add_argument("--img-size", type=int, default=None, help="px (micro 32, imgfocus 112, else 224)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="timed steps per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--tasks", type=int, default=6, help="past tasks before the timed one (task index)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (train.compile=true)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--quick", action="store_true", help="few repeats (make bench)")
    p.add_argument("--json", default=None, help="output (default benchmarks/results/step-<backbone>.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.img_size is None:
        args.img_size = {"micro": 32, "imgfocus": 112}.get(args.backbone, 224)
    if args.quick:  # the micro ViT's steps take milliseconds: more repeats cost nothing and steady the median
        args.repeats = 31 if args.backbone == "micro" else min(args.repeats, 5)
        args.warmup = min(args.warmup, 1)
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; choose from {VARIANTS}")
    return args


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _paired(a: list[float] | None, b: list[float] | None) -> float | None:
    """Median over repeats of a_i / b_i: the two steps of a repeat ran back to back, so slow load drifts that
    move both cancel in their ratio."""
    return None if not a or not b else statistics.median(x / y for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table, write the JSON and return it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return {}
    device = torch.device(args.device)
    parent_argv = [a for a in argv if a != "--quick"] + (["--quick"] if args.quick else [])
    memory = {} if args.no_memory or device.type == "cuda" else cpu_memory(args, parent_argv)
    bench = build_bench(args)
    variants = {name: Variant(name, bench) for name in args.variants}
    warmup = {name: 0.0 for name in variants}  # with --compile: includes the compilation
    for _ in range(args.warmup):
        for name, v in variants.items():
            warmup[name] += v.step()[0]
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, v in variants.items():
            wall, c = v.step()
            times[name].append(wall)
            cpu[name].append(c)
    if device.type == "cuda" and not args.no_memory:
        memory = cuda_memory(bench, variants, args.mem_steps)
    rows = {}
    for name in variants:
        med = statistics.median(times[name])
        rows[name] = {"median_s": med, "min_s": min(times[name]),
                      "cpu_median_s": statistics.median(cpu[name]), "cpu_min_s": min(cpu[name]),
                      "times_s": times[name], "cpu_s": cpu[name], "images_per_s": args.batch / med,
                      "warmup_s": warmup[name],
                      **{k: v for k, v in memory.get(name, {}).items() if k != "variant"}}
    med = {n: r["median_s"] for n, r in rows.items()}
    fastest = {n: r["min_s"] for n, r in rows.items()}
    cpu_med = {n: r["cpu_median_s"] for n, r in rows.items()}
    cpu_min = {n: r["cpu_min_s"] for n, r in rows.items()}
    mem = {n: r.get("step_mb") for n, r in rows.items()}
    tot_key = "peak_alloc_mb" if device.type == "cuda" else "peak_rss_mb"
    tot = {n: r.get(tot_key) for n, r in rows.items()}
    ratios = {
        "sr2lora/seqlora": {"time": _ratio(med.get("sr2lora"), med.get("seqlora")),
                            "time_min": _ratio(fastest.get("sr2lora"), fastest.get("seqlora")),
                            "time_paired": _paired(times.get("sr2lora"), times.get("seqlora")),
                            "cpu_time": _ratio(cpu_med.get("sr2lora"), cpu_med.get("seqlora")),
                            "cpu_time_min": _ratio(cpu_min.get("sr2lora"), cpu_min.get("seqlora")),
                            "memory": _ratio(mem.get("sr2lora"), mem.get("seqlora")),
                            "memory_total": _ratio(tot.get("sr2lora"), tot.get("seqlora"))},
        "naive/sr2lora": {"time": _ratio(med.get("naive"), med.get("sr2lora")),
                          "time_min": _ratio(fastest.get("naive"), fastest.get("sr2lora")),
                          "time_paired": _paired(times.get("naive"), times.get("sr2lora")),
                          "cpu_time": _ratio(cpu_med.get("naive"), cpu_med.get("sr2lora")),
                          "cpu_time_min": _ratio(cpu_min.get("naive"), cpu_min.get("sr2lora")),
                          "memory": _ratio(mem.get("naive"), mem.get("sr2lora")),
                          "memory_total": _ratio(tot.get("naive"), tot.get("sr2lora"))},
    }
    m = bench.model
    result = {
        "backbone": args.backbone, "img_size": args.img_size, "batch": args.batch, "task_index": args.tasks,
        "layers": m.num_layers, "embed_dim": m.embed_dim, "rank": m.loras[0].rank if m.loras else 0,
        "precision": args.precision, "compile": args.compile, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "repeats": args.repeats,
        "torch": torch.__version__, "variants": rows, "ratios": ratios,
    }
    print_table(result, tot_key)
    quick = "-quick" if args.quick else ""
    write_result(result, args.json, f"step-{args.backbone.replace('/', '_')}{quick}.json")
    return result


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(r: dict, tot_key: str) -> None:
    print(f"{r['backbone']} @ {r['img_size']} px, batch {r['batch']}, task index {r['task_index']}, "
          f"{r['precision']}{' compiled' if r['compile'] else ''}, {r['device']} ({r['threads']} threads, "
          f"{r['device_name']}, CPU capability {torch.backends.cpu.get_cpu_capability()}), median of {r['repeats']}")
    print(f"{'variant':10s} {'step s':>8s} {'min s':>8s} {'cpu s':>8s} {'img/s':>8s} {'step MB':>9s} "
          f"{'peak MB':>9s}")
    for name, row in r["variants"].items():
        print(f"{name:10s} {row['median_s']:8.3f} {row['min_s']:8.3f} {row['cpu_median_s']:8.3f} "
              f"{row['images_per_s']:8.1f} {_fmt(row.get('step_mb'), '9.0f')} "
              f"{_fmt(row.get(tot_key), '9.0f')}")
    for key, v in r["ratios"].items():
        print(f"{key:16s} time {_fmt(v['time'], '.3f')} (paired {_fmt(v['time_paired'], '.3f')}, fastest "
              f"{_fmt(v['time_min'], '.3f')}; cpu "
              f"{_fmt(v['cpu_time'], '.3f')}, fastest {_fmt(v['cpu_time_min'], '.3f')})  memory "
              f"{_fmt(v['memory'], '.3f')} (total {_fmt(v['memory_total'], '.3f')})")


if __name__ == "__main__":
    main()
