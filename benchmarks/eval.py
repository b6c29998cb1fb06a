"""Inference throughput: the folded model vs the plain timm backbone with the same weights vs unfolded LoRA.

The model has ``--tasks`` tasks of LoRA (random nonzero B) and heads; evaluation runs every branch. Variants,
interleaved, median images/s (no autograd, eval mode):

- ``folded``: :class:`sr2lora.models.backbone.CILModel` as evaluation runs it: past branches folded into the
  qkv weight, the last block for [CLS] only, fused oneDNN linears on CPU (``models.fastpath``); all heads.
- ``folded-timm-ops``: the same folded weights through timm's own modules (``fast_inference`` and the
  [CLS]-only last block off): what folding alone costs.
- ``plain-timm``: ``timm.create_model`` of the same architecture with the folded qkv weights loaded, its own
  forward (pooled [CLS] feature) and one linear head over all classes: the floor of an unadapted backbone.
- ``unfolded``: every forward sums all task branches (``set_folding(False)``), the reference's way.
- ``folded-bf16``: ``folded`` under bf16 autocast: what evaluating in a bf16 run's training precision would run
  instead of sr2lora's float32 evaluation (``sr2lora.core.hardware.EVAL_PRECISION``); its images/s against
  ``folded`` is what that policy costs per image, its logit difference what it buys in exactness.

    python benchmarks/eval.py --backbone imgfocus --img-size 112 --batch 64
    python benchmarks/eval.py --quick     # micro ViT (make bench)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_result  # noqa: E402
from step import backbone_spec  # noqa: E402

from sr2lora.models.backbone import CILModel, create_vit  # noqa: E402


def build(args: argparse.Namespace) -> tuple[CILModel, torch.nn.Module, torch.Tensor]:
    """(CIL model with ``args.tasks`` folded tasks, plain timm ViT with the same effective weights, the
    stacked head weight and bias)."""
    torch.manual_seed(0)
    name, pretrained, kwargs, rank, targets = backbone_spec(args.backbone)
    vit = create_vit(name, pretrained, img_size=args.img_size, timm_kwargs=kwargs)
    plain = copy.deepcopy(vit)
    model = CILModel(vit, rank=rank, targets=targets)
    with torch.no_grad():
        for _ in range(args.tasks):
            model.add_task(10)
            for lora in model.loras:
                lora.B[-1].normal_(0, 0.02)
    model.fold()
    model.eval()
    with torch.no_grad():
        for blk, lora in zip(plain.blocks, model.loras):
            blk.attn.qkv.weight.copy_(lora.folded_weight)
    plain.eval()
    return model, plain, model.heads.concatenated()


def main(argv: list[str] | None = None) -> dict:
    """Time the variants (interleaved, median); print a table, write JSON and return it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="micro", help="micro | imgfocus | a timm model name (random init)")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tasks", type=int, default=10, help="tasks of LoRA (all evaluated)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="micro ViT, few repeats (make bench)")
    p.add_argument("--json", default=None, help="output (default benchmarks/results/eval-<backbone>.json)")
    args = p.parse_args(argv)
    if args.img_size is None:
        args.img_size = {"micro": 32, "imgfocus": 112}.get(args.backbone, 224)
    if args.quick:
        args.repeats = 31 if args.backbone == "micro" else min(args.repeats, 3)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, plain, (w, b) = build(args)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)

    def folded() -> torch.Tensor:
        return model(x).logits

    def folded_timm_ops() -> torch.Tensor:
        model.fast_inference, cls_only = False, model.cls_only_last
        model.cls_only_last = False
        try:
            return model(x).logits
        finally:
            model.fast_inference, model.cls_only_last = True, cls_only

    def plain_timm() -> torch.Tensor:
        return F.linear(plain(x), w, b)

    def unfolded() -> torch.Tensor:
        model.set_folding(False)
        try:
            return model(x).logits
        finally:
            model.set_folding(True)

    def folded_bf16() -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return model(x).logits.float()

    variants = {"folded": folded, "folded-timm-ops": folded_timm_ops, "plain-timm": plain_timm,
                "unfolded": unfolded, "folded-bf16": folded_bf16}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        ref = plain_timm()
        max_diff = {k: float((f() - ref).abs().max()) for k, f in variants.items()}
        for _ in range(args.repeats):
            for k, f in variants.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    rows = {k: {"median_s": statistics.median(v), "images_per_s": args.batch / statistics.median(v),
                "max_abs_logit_diff_vs_plain": max_diff[k], "times_s": v} for k, v in times.items()}
    result = {"backbone": args.backbone, "img_size": args.img_size, "batch": args.batch, "tasks": args.tasks,
              "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
              "variants": rows}
    print(f"inference, {args.backbone} @ {args.img_size} px, batch {args.batch}, {args.tasks} tasks, "
          f"{result['threads']} threads, median of {args.repeats}")
    print(f"{'variant':16s} {'img/s':>9s} {'vs plain':>9s} {'max |Δlogit|':>13s}")
    base = rows["plain-timm"]["images_per_s"]
    for k, r in rows.items():
        print(f"{k:16s} {r['images_per_s']:9.1f} {r['images_per_s'] / base:8.2f}x "
              f"{r['max_abs_logit_diff_vs_plain']:13.2e}")
    quick = "-quick" if args.quick else ""
    write_result(result, args.json, f"eval-{args.backbone.replace('/', '_')}{quick}.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
