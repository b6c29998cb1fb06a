"""bf16 autocast (train.precision=bf16): the relation and its eigenvalues stay fp32; the loss matches fp32.

The numerics run on the CPU and, where one is visible (``benchmarks/gpu.sh``), on a CUDA device too.
"""

import pytest
import torch

from conftest import read_results, run_cli
from sr2lora.core.hardware import float32_evaluation
from sr2lora.methods import TaskContext, create_method
from sr2lora.methods.losses import relation_matrix, relation_spectrum, spectral_relation_loss
from sr2lora.models.backbone import CILModel, create_vit
from sr2lora.train.step import training_step

MICRO = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def micro_model(tasks: int = 3, device: str = "cpu") -> CILModel:
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch16_224", False, img_size=32, timm_kwargs=MICRO)
    model = CILModel(vit, 4, ["k", "v"])
    with torch.no_grad():
        for _ in range(tasks):
            model.add_task(4)
            for lora in model.loras:
                lora.B[-1].normal_(0, 0.05)
    model.fold(tasks - 1)
    return model.eval().to(device)


def bf16(device: str = "cpu"):
    return torch.autocast(device, dtype=torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", ["none", "l2", "trace"])
def test_relation_and_eigenvalues_are_fp32_under_autocast(norm, device):
    h = torch.randn(8, 12, 64, device=device) * 5
    with bf16(device):
        r = relation_matrix(h, norm)
        ev = relation_spectrum(h, norm)
        r_low = relation_matrix(h.bfloat16(), norm)
    assert r.dtype == ev.dtype == r_low.dtype == torch.float32
    # autocast does not reach inside: exactly the fp32 computation (from bf16 inputs: of their fp32 values)
    assert torch.equal(r, relation_matrix(h, norm))
    assert torch.equal(ev, relation_spectrum(h, norm))
    assert torch.equal(r_low, relation_matrix(h.bfloat16().float(), norm))


@pytest.mark.parametrize("device", DEVICES)
def test_relation_loss_under_autocast_matches_fp32(device):
    """Features from a bf16 forward give the spectral loss within 3% (relative) of the fp32 forward's; the
    eigenvalues themselves within 2% (bf16 keeps 8 mantissa bits: ~0.4% per rounding, through 4 blocks)."""
    model = micro_model(3, device)
    x = torch.rand(16, 3, 32, 32, device=device)
    with torch.no_grad(), float32_evaluation(device):  # the reference really float32 (no TF32 on CUDA)
        new32 = model(x, tasks=3, layers=True, logits=False).layers
        old32 = model(x, tasks=2, layers=True, logits=False).layers
    with torch.no_grad():
        with bf16(device):
            new16 = model(x, tasks=3, layers=True, logits=False).layers
            old16 = model(x, tasks=2, layers=True, logits=False).layers
            loss16 = spectral_relation_loss(new16, old16)
            ev16 = relation_spectrum(new16)
    assert float((new16.float() - new32).abs().max()) > 1e-3  # the backbone's matmuls did run in bf16
    assert loss16.dtype == ev16.dtype == torch.float32
    loss32 = spectral_relation_loss(new32, old32)
    ev32 = relation_spectrum(new32)
    assert loss32 > 0
    assert float((loss16 - loss32).abs() / loss32) < 0.03
    assert float(((ev16 - ev32).abs() / ev32.abs().clamp_min(1e-3)).max()) < 0.02


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_under_autocast_has_fp32_loss_and_grads(device):
    model = micro_model(3, device)
    method = create_method("sr2lora", {}, 1.0)
    ctx = TaskContext(task=2, model=model, num_tasks=3)
    params = model.task_parameters(2)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.randint(8, 12, (8,), device=device)
    loss, ce, reg = training_step(model, method, ctx, opt, x, y, 8, autocast=lambda: bf16(device))
    assert loss.dtype == ce.dtype == reg.dtype == torch.float32
    assert torch.isfinite(loss) and reg > 0
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in params)


@pytest.mark.slow
def test_smoke_runs_in_bf16(tmp_path):
    out = tmp_path / "bf16"
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", out, "train.precision=bf16",
                   "train.epochs=1", "ca.epochs=2") == 0
    r = read_results(out)
    assert r["num_tasks"] == 5 and len(r["acc_curve"]) == 5
    assert all(0.0 <= a <= 100.0 for a in r["acc_curve"])
    assert r["final_acc"] > 100 / 20  # better than chance over 20 classes
