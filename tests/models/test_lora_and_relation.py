"""Core numerical claims: folded LoRA, previous-model pass, per-task isolation, the relation losses."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from sr2lora.methods.losses import (
    entrywise_relation_loss,
    relation_spectrum,
    spectral_relation_loss,
)
from sr2lora.models.backbone import CILModel
from sr2lora.models.lora import LoRAQKV

TOL = 1e-5


def micro_model(targets=("k", "v"), rank=3, seed=0) -> CILModel:
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, embed_dim=48,
        depth=3, num_heads=3,
    )
    return CILModel(vit, rank=rank, targets=targets).eval()


def randomize_lora(model: CILModel, t: int, scale: float = 0.05) -> None:
    with torch.no_grad():
        for lora in model.loras:
            lora.B[t].normal_(0, scale)
            lora.A[t].normal_(0, scale)


def test_lora_qkv_adapts_only_targets():
    base = torch.nn.Linear(12, 36)
    lora = LoRAQKV(base, targets=["k"], rank=2)
    lora.add_task()
    with torch.no_grad():
        lora.B[0].normal_()
    lora.active = 1
    x = torch.randn(5, 12)
    y0, y1 = base(x), lora(x)
    assert torch.allclose(y0[:, :12], y1[:, :12], atol=TOL)  # q untouched
    assert torch.allclose(y0[:, 24:], y1[:, 24:], atol=TOL)  # v untouched
    assert not torch.allclose(y0[:, 12:24], y1[:, 12:24], atol=1e-3)  # k adapted
    expected_k = y0[:, 12:24] + x @ (lora.B[0][0] @ lora.A[0][0]).T
    assert torch.allclose(y1[:, 12:24], expected_k, atol=TOL)


@pytest.mark.parametrize("targets", [("k", "v"), ("q", "v"), ("q", "k", "v")])
def test_folded_forward_equals_unfolded_sum(targets):
    model = micro_model(targets)
    x = torch.rand(4, 3, 32, 32)
    for t in range(3):
        model.add_task(2)
        randomize_lora(model, t)
        model.fold(t)  # past tasks folded, task t live (the training situation)
        out_fold = model(x, tasks=t + 1, layers=True)
        model.set_folding(False)
        out_sum = model(x, tasks=t + 1, layers=True)
        model.set_folding(True)
        assert torch.allclose(out_fold.layers, out_sum.layers, atol=TOL, rtol=1e-4)
        assert torch.allclose(out_fold.logits, out_sum.logits, atol=TOL, rtol=1e-4)
    model.fold()
    full = model(x, layers=True)
    model.set_folding(False)
    assert torch.allclose(full.layers, model(x, layers=True).layers, atol=TOL, rtol=1e-4)


def test_previous_model_pass_equals_model_at_end_of_previous_task():
    model = micro_model()
    x = torch.rand(4, 3, 32, 32)
    for t in range(2):
        model.add_task(2)
        randomize_lora(model, t)
        model.fold()
    snapshot = copy.deepcopy(model)
    reference = snapshot(x, layers=True)  # the model as it was at the end of task 1
    model.add_task(2)  # task 2 starts and trains
    randomize_lora(model, 2, scale=0.2)
    current = model(x, tasks=3, layers=True)
    with torch.no_grad():
        previous = model(x, tasks=2, layers=True)
    assert torch.allclose(previous.layers, reference.layers, atol=TOL)
    assert not torch.allclose(current.layers, reference.layers, atol=1e-3)
    # The slow path (fewer tasks than folded) must agree as well: analysis of an older model.
    model.fold()
    with torch.no_grad():
        older = model(x, tasks=2, layers=True)
    assert torch.allclose(older.layers, reference.layers, atol=TOL, rtol=1e-4)


def test_previous_model_pass_records_no_graph():
    model = micro_model()
    model.add_task(2)
    model.fold()
    model.add_task(2)
    for p in model.task_parameters(1):
        p.requires_grad_(True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        old = model(x, tasks=1, layers=True)
    assert old.layers.grad_fn is None and not old.layers.requires_grad
    new = model(x, tasks=2, layers=True)
    assert new.layers.requires_grad


def test_only_current_task_changes(tmp_path):
    """Train three smoke tasks; after task t only task t's LoRA factors and head differ from before."""
    from sr2lora.config import load_config
    from sr2lora.train.engine import Trainer

    cfg = load_config("smoke", ["train.epochs=1", "ca.enabled=false"])
    tr = Trainer(cfg, None, progress=False)

    for t in range(3):
        tr.model.add_task(tr.scenario.task_size(t))
        snap = {k: v.clone() for k, v in tr.model.state_dict().items()}
        tr.train_task(t)
        after = tr.model.state_dict()
        changed = {k for k in snap if not torch.equal(snap[k], after[k])}
        own = {k for k in snap if k.endswith(f".A.{t}") or k.endswith(f".B.{t}") or k.startswith(f"heads.{t}.")}
        assert changed - own == set(), f"task {t} changed {sorted(changed - own)[:5]}"
        assert any(k.startswith(f"heads.{t}.") for k in changed)
        if t > 0:
            assert any(k.endswith(f".B.{t}") for k in changed)



def stack(b=6, L=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, L, d, generator=g) * 3


def test_spectral_loss_zero_for_identical_inputs():
    h = stack()
    assert spectral_relation_loss(h, h.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert entrywise_relation_loss(h, h.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_spectral_loss_equals_smooth_l1_of_squared_singular_values():
    new, old = stack(seed=1), stack(seed=2)
    sv_new = torch.linalg.svdvals(new.double()) ** 2  # descending; (B, min(L, d)) = (B, L) here
    sv_old = torch.linalg.svdvals(old.double()) ** 2
    expected = F.smooth_l1_loss(sv_new.flip(-1), sv_old.flip(-1), beta=1.0)
    got = spectral_relation_loss(new, old)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_spectral_loss_invariant_to_feature_rotation():
    new, old = stack(seed=3), stack(seed=4)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(5)))
    a = spectral_relation_loss(new, old)
    b = spectral_relation_loss(new @ q, old @ q)
    assert b.item() == pytest.approx(a.item(), rel=1e-4)
    # entry-wise alignment is also rotation invariant in feature space (R = H Hᵀ), but not to layer mixing:
    mix, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(6)))
    c = spectral_relation_loss(mix @ new, mix @ old)  # spectrum unchanged by an orthogonal layer mixing
    assert c.item() == pytest.approx(a.item(), rel=1e-4)
    e1, e2 = entrywise_relation_loss(new, old), entrywise_relation_loss(mix @ new, mix @ old)
    assert abs(e1.item() - e2.item()) > 1e-3


def test_spectral_loss_finite_gradient_rank_deficient():
    base = torch.randn(4, 1, 16)
    new = base.repeat(1, 5, 1).requires_grad_(True)  # every layer identical: R has rank 1
    old = torch.zeros(4, 5, 16)  # rank 0
    loss = spectral_relation_loss(new, old)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(new.grad).all() and new.grad.abs().sum() > 0


def test_spectral_loss_old_side_has_no_gradient():
    new = stack(seed=7).requires_grad_(True)
    old = stack(seed=8).requires_grad_(True)
    spectral_relation_loss(new, old).backward()
    assert old.grad is None and new.grad is not None


def test_relation_built_in_fp32_under_autocast():
    h = stack().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ev = relation_spectrum(h)
    assert ev.dtype == torch.float32
