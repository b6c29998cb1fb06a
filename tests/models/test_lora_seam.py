"""The LoRA parametrisation seam: branch scales, down-projections and qkv-input capture.

Methods that change how the LoRA branches are parametrised (SD-LoRA, InfLoRA) go through these public calls
instead of writing the layer's internals or registering hooks that rewrite the model.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from sr2lora.config import load_config
from sr2lora.models.backbone import CILModel
from sr2lora.models.lora import LoRAQKV
from sr2lora.train.engine import Trainer


def micro_model(targets=("k", "v"), rank=3, tasks=3, seed=0) -> CILModel:
    """A 3-block timm ViT with ``tasks`` random LoRA branches, past ones folded (the training situation)."""
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, embed_dim=48,
        depth=3, num_heads=3,
    )
    model = CILModel(vit, rank=rank, targets=targets).eval()
    for _ in range(tasks):
        model.add_task(2)
        with torch.no_grad():
            for lora in model.loras:
                lora.A[-1].normal_(0, 0.05)
                lora.B[-1].normal_(0, 0.05)
    model.fold(tasks - 1)
    return model


def layer_with_tasks(targets=("q", "v"), tasks=3) -> LoRAQKV:
    torch.manual_seed(0)
    lora = LoRAQKV(torch.nn.Linear(8, 24), targets=targets, rank=2)
    for _ in range(tasks):
        lora.add_task()
        with torch.no_grad():
            lora.B[-1].normal_()
    lora.fold()
    lora.active = tasks
    return lora


# ---------------------------------------------------------------- branch scales


@pytest.mark.parametrize("grad", [False, True])
def test_layer_scales_set_then_cleared_restore_the_exact_outputs(grad):
    lora = layer_with_tasks()
    x = torch.randn(4, 5, 8)
    with torch.set_grad_enabled(grad):
        before = lora(x)
        gamma = torch.tensor([0.5, 2.0, -1.0])
        lora.set_branch_scales(gamma)
        scaled = lora(x)
        lora.clear_branch_scales()
        after = lora(x)
    assert lora.scales is None and lora.branch_scales() is None
    assert torch.equal(after, before)  # bit for bit: the folded path again
    expected = F.linear(x, lora.base.weight, lora.base.bias) + sum(
        F.linear(x, g * lora.task_delta(s)) for s, g in enumerate(gamma.tolist())
    )
    torch.testing.assert_close(scaled, expected.detach() if not grad else expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(scaled, before, atol=1e-3)


def test_layer_scales_per_target_and_callable_reach_the_parameters():
    lora = layer_with_tasks(targets=("k", "v"))
    x = torch.randn(3, 8)
    alpha = torch.nn.Parameter(torch.tensor([[1.0, 0.5], [2.0, 1.0], [1.0, -3.0]]))  # (tasks, targets)
    calls = []

    def scales() -> torch.Tensor:
        calls.append(1)
        return alpha * 1.0

    lora.set_branch_scales(scales)
    y = lora(x)
    assert len(calls) == 1  # the callable is evaluated at each forward
    expected = F.linear(x, lora.base.weight, lora.base.bias)
    d3 = expected.unflatten(-1, (3, 8)).clone()
    for s in range(3):
        prod = torch.bmm(lora.B[s], lora.A[s]).detach()
        for k, i in enumerate(lora.target_index):
            d3[:, i] += float(alpha.detach()[s, k]) * x @ prod[k].T
    torch.testing.assert_close(y.detach(), d3.flatten(-2), rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert alpha.grad is not None and bool(torch.all(alpha.grad != 0))


def test_model_scales_per_layer_callable_and_clear():
    model = micro_model()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x, layers=True, logits=False).layers.clone()
        ones = [torch.ones(3) for _ in model.loras]
        model.set_branch_scales(lambda layer: ones[layer])
        same = model(x, layers=True, logits=False).layers  # γ = 1: the same function, unfolded
        seen = []
        model.set_branch_scales(lambda layer: seen.append(layer) or torch.tensor([1.0, 1.0, 0.0]))
        dropped = model(x, logits=False).feature  # the last branch switched off
        model.clear_branch_scales()
        after = model(x, layers=True, logits=False).layers
        model.fold(2)
        expected = model(x, tasks=2, logits=False).feature  # the model of tasks 0..1
    assert sorted(seen) == list(range(len(model.loras)))  # every layer asked for its own scales
    assert all(lora.scales is None for lora in model.loras)
    assert torch.equal(after, before)
    torch.testing.assert_close(same, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dropped, expected, rtol=1e-5, atol=1e-5)


def test_no_forward_pre_hook_on_the_model_during_or_after_an_sdlora_task():
    tr = Trainer(load_config("smoke", ["method.name=sdlora", "train.epochs=1", "ca.epochs=2"]), None,
                 progress=False)
    before_task = tr.method.before_task
    during = []

    def spy(ctx):
        before_task(ctx)
        during.append(sum(len(m._forward_pre_hooks) for m in ctx.model.modules()))
        assert all(lora.scales is not None for lora in ctx.model.loras)

    tr.method.before_task = spy
    for t in range(2):
        tr.model.add_task(tr.scenario.task_size(t))
        tr.train_task(t)
        hooks = [(name, len(m._forward_pre_hooks)) for name, m in tr.model.named_modules()]
        assert [h for h in hooks if h[1]] == [], f"forward pre-hooks left after task {t}"
        assert all(lora.scales is None for lora in tr.model.loras)
    assert during == [0, 0]
    assert tr.method.alpha.shape == (2,)


# ---------------------------------------------------------------- down-projections


def test_set_down_projection_equals_the_direct_write():
    new, old = layer_with_tasks(targets=("k", "v")), layer_with_tasks(targets=("k", "v"))
    a = torch.randn(2, 8, dtype=torch.float64)  # a float64 design, cast to the parameter's dtype
    with torch.no_grad():
        old.A[1].copy_(a.to(old.A[1].dtype).unsqueeze(0).expand_as(old.A[1]))
    new.set_down_projection(1, a)
    assert torch.equal(new.A[1], old.A[1]) and new.A[1].requires_grad
    assert torch.equal(new.down_projection(1, "v"), a.float())
    for s in (0, 2):
        assert torch.equal(new.A[s], old.A[s])  # other tasks untouched

    b = torch.randn(2, 8)
    new.set_down_projection(2, b, target="v", freeze=True)
    assert torch.equal(new.down_projection(2, "v"), b)
    assert torch.equal(new.down_projection(2, "k"), old.down_projection(2, "k"))
    assert not new.A[2].requires_grad
    with pytest.raises(ValueError, match=r"expected shape \(2, 8\)"):
        new.set_down_projection(0, torch.zeros(8, 2))
    with pytest.raises(ValueError, match="'q' is not adapted"):
        new.set_down_projection(0, b, target="q")


def test_model_set_down_projection_one_matrix_per_layer():
    model = micro_model(tasks=2)
    mats = [torch.randn(3, 48) for _ in model.loras]
    model.set_down_projection(1, mats, freeze=True)
    for lora, m in zip(model.loras, mats):
        assert torch.equal(lora.A[1][0], m) and torch.equal(lora.A[1][1], m)
        assert not lora.A[1].requires_grad
    with pytest.raises(ValueError, match="one down-projection per LoRA layer"):
        model.set_down_projection(1, mats[:1])


# ---------------------------------------------------------------- qkv-input capture


def test_capture_gives_the_qkv_inputs_of_every_block():
    model = micro_model()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model(x, logits=False).feature
        with model.capture_qkv_inputs() as inputs:
            captured = model(x, logits=False).feature
            model(x, tasks=1, logits=False)  # a second forward: a second entry per layer
        # independently: each block's qkv reads norm1 of the block's input (timm's forward, block by block)
        h = model.embed(x)
        expected = []
        with model.active_tasks(model.num_tasks):
            for blk in model.vit.blocks:
                expected.append(blk.norm1(h))
                h = blk(h)
    assert torch.equal(captured, plain)  # observing changes nothing
    assert len(inputs) == len(model.vit.blocks) and all(len(per) == 2 for per in inputs)
    for got, want in zip(inputs, expected):
        assert got[0].shape == (2, 17, 48)
        torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0

    streamed = []
    with torch.no_grad(), model.capture_qkv_inputs(lambda layer, h: streamed.append((layer, h))) as stored:
        model(x, logits=False)
    assert [layer for layer, _ in streamed] == list(range(len(model.loras)))
    assert all(per == [] for per in stored)  # with a callback nothing is kept
    assert torch.equal(streamed[0][1], inputs[0][0])
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_capture_removes_its_observers_when_the_block_raises():
    model = micro_model(tasks=1)
    with pytest.raises(RuntimeError, match="stop"):
        with model.capture_qkv_inputs():
            raise RuntimeError("stop")
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0
