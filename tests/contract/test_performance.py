"""The performance code: the step and CA benchmarks produce consistent reports, the cached CA sampler
draws from the right distribution, and the fast inference path equals timm's forward.

Speed is measured by the benchmarks (``make bench``; figures in the README), not asserted here: timing ratios on
a shared 2-vCPU machine move by several percent between runs, so a time threshold in a test would fail at random.
What the tests do assert is deterministic: the report's structure and arithmetic, and the step memory, where the
naive step's retained autograd graph shows as a ~2× rise (RSS in fresh subprocesses, a structural effect, not a
timing one).
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from sr2lora.classifiers.gaussians import ClassGaussians
from sr2lora.models import fastpath
from sr2lora.models.backbone import CILModel, create_vit
from sr2lora.models.fastpath import block_forward, onednn_available, supports

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ca as ca_bench  # noqa: E402
import linear as linear_bench  # noqa: E402
import precision as precision_bench  # noqa: E402
import step as step_bench  # noqa: E402


@pytest.mark.slow
def test_step_benchmark_report(tmp_path):
    """step.py on the micro ViT: every variant timed ``repeats`` times, ratios are the ratios of the rows, the
    JSON on disk is the returned report, and the naive step (graph kept) uses more step memory than sr2lora,
    which uses about what seqlora does."""
    out = tmp_path / "step.json"
    r = step_bench.main(["--backbone", "micro", "--repeats", "5", "--threads", "1", "--json", str(out)])
    assert r["task_index"] >= 5
    assert set(r["variants"]) == set(step_bench.VARIANTS)
    rows = r["variants"]
    for row in rows.values():
        assert len(row["times_s"]) == 5 and len(row["cpu_s"]) == 5
        assert all(t > 0 for t in row["times_s"]) and row["min_s"] <= row["median_s"]
    sr, nv = r["ratios"]["sr2lora/seqlora"], r["ratios"]["naive/sr2lora"]
    assert math.isclose(sr["time"], rows["sr2lora"]["median_s"] / rows["seqlora"]["median_s"], rel_tol=1e-12)
    assert math.isclose(nv["time_min"], rows["naive"]["min_s"] / rows["sr2lora"]["min_s"], rel_tol=1e-12)
    paired = sorted(a / b for a, b in zip(rows["sr2lora"]["times_s"], rows["seqlora"]["times_s"]))
    assert math.isclose(sr["time_paired"], paired[2], rel_tol=1e-12)
    assert sr["memory"] <= 1.15 and nv["memory"] >= 1.5, r["ratios"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    # which kind of CPU made the figures (bf16 is native on some, emulated and far slower on others)
    assert r["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r["machine"]["cpu_native_bf16"] == (r["machine"]["cpu_avx512_bf16"] or r["machine"]["cpu_amx"])


# ---------------------------------------------------------------- classifier-alignment sampling


def test_cached_sampler_draws_from_the_same_distribution():
    """ClassGaussians.sample and MultivariateNormal(μ, Σ) agree in mean and covariance: with n = 40,000 draws
    in d = 16, each sample mean is within 5 standard errors of μ and each sample covariance within 5% of Σ
    (relative Frobenius norm; the sampling error is ~ sqrt(d/n) ≈ 2%)."""
    d, n = 16, 40_000
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g)
    feats = torch.randn(200, d, generator=g) @ a + torch.randn(d, generator=g) * 4
    gauss = ClassGaussians(d)
    gauss.add_classes(feats, torch.zeros(200, dtype=torch.long), [0], shrink=0.01)
    mu, chol = gauss.means[0].double(), gauss.chols[0].double()
    sigma = chol @ chol.T
    x_cached, y = gauss.sample([0], n, torch.Generator().manual_seed(1))
    assert x_cached.shape == (n, d) and torch.equal(y, torch.zeros(n, dtype=torch.long))
    torch.manual_seed(2)
    x_ref = torch.distributions.MultivariateNormal(mu.float(), covariance_matrix=sigma.float()).sample((n,))
    se = (torch.diagonal(sigma) / n).sqrt()
    for x in (x_cached.double(), x_ref.double()):
        assert ((x.mean(0) - mu).abs() / se).max() < 5
        err = torch.linalg.matrix_norm(torch.cov(x.T) - sigma) / torch.linalg.matrix_norm(sigma)
        assert err < 0.05


def test_ca_benchmark_report(tmp_path):
    """ca.py times both samplers on the same statistics and reports their ratio (the figure is in the README)."""
    out = tmp_path / "ca.json"
    r = ca_bench.main(["--classes", "4", "--dim", "64", "--samples", "64", "--repeats", "2", "--json", str(out)])
    assert set(r["epoch_s"]) == {"cached", "rebuilt"} and all(v > 0 for v in r["epoch_s"].values())
    assert math.isclose(r["speedup"], r["epoch_s"]["rebuilt"] / r["epoch_s"]["cached"], rel_tol=1e-12)
    assert json.loads(out.read_text())["speedup"] == pytest.approx(r["speedup"], rel=1e-12)


# ---------------------------------------------------------------- the lean/fused inference path


@pytest.fixture(params=[False, True], ids=["F.linear", "fused-onednn"])
def fused(request, monkeypatch):
    """Both kernels of the gradient-free path, whichever this CPU would pick, so both are checked anywhere."""
    monkeypatch.setattr(fastpath, "USE_ONEDNN", request.param)
    return request.param


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN fused linear")
def test_linear_benchmark_report(tmp_path):
    """benchmarks/linear.py (the measurement behind the fused-kernel rule): one row per ViT projection shape,
    ratios are the ratios of the rows, and the report says what this CPU's fast path uses."""
    out = tmp_path / "linear.json"
    r = linear_bench.main(["--dim", "32", "--tokens", "5", "--batch", "4", "--repeats", "3", "--json", str(out)])
    assert [(s["in"], s["out"], s["gelu"]) for s in r["shapes"]] == [(32, 96, None), (32, 128, "none"),
                                                                     (128, 32, None), (32, 32, None)]
    for s in r["shapes"]:
        assert math.isclose(s["ratio"], s["fused_ms"] / s["plain_ms"], rel_tol=1e-12)
    assert r["fused_used_here"] == fastpath.onednn_preferred()
    assert r["machine"]["cpu_capability"] == r["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))


@pytest.mark.slow
def test_precision_benchmark_report(tmp_path):
    """benchmarks/precision.py on the micro ViT: both precisions timed ``repeats`` times, the ratio is the ratio
    of the medians, and the report says what `auto` picks on this machine."""
    from sr2lora.core.hardware import probe, resolve_precision

    out = tmp_path / "precision.json"
    r = precision_bench.main(["--backbone", "micro", "--repeats", "2", "--tasks", "2", "--threads", "1",
                              "--json", str(out)])
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in r["times_s"].values())
    assert math.isclose(r["bf16_over_fp32"], r["median_s"]["bf16"] / r["median_s"]["fp32"], rel_tol=1e-12)
    assert r["auto_picks"] == resolve_precision("auto", probe(torch.device("cpu")))[0]
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))


def test_fused_kernel_is_used_only_where_it_was_measured_faster():
    assert not fastpath.onednn_preferred("AVX2") and not fastpath.onednn_preferred("DEFAULT")
    assert fastpath.onednn_preferred("AVX512")
    assert fastpath.USE_ONEDNN == fastpath.onednn_preferred(torch.backends.cpu.get_cpu_capability())


@pytest.mark.parametrize("cls_only", [False, True])
def test_fast_block_forward_equals_timm(cls_only, fused):
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch16_224", False, img_size=32,
                     timm_kwargs={"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4,
                                  "init_values": 0.5})
    model = CILModel(vit, 4, ["k", "v"])
    model.add_task(3)
    with torch.no_grad():
        model.loras[0].B[0].normal_(0, 0.1)
        x = torch.randn(5, 17, 64)
        for lora in model.loras:
            lora.active = 1  # with the (nonzero) LoRA branch of task 0
        for blk in vit.blocks:
            assert supports(blk)
            ref = blk(x)[:, :1] if cls_only else blk(x)
            out = block_forward(blk, x, cls_only)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.enable_grad():  # with autograd the same function gives the same values
        out = block_forward(vit.blocks[0], x, cls_only)
    torch.testing.assert_close(out, vit.blocks[0](x)[:, :1] if cls_only else vit.blocks[0](x), rtol=1e-5,
                               atol=1e-5)


def test_model_forward_fast_path_matches_timm_ops(fused):
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch16_224", False, img_size=32,
                     timm_kwargs={"patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 4})
    model = CILModel(vit, 4, ["k", "v"]).eval()
    for _ in range(3):
        model.add_task(4)
        with torch.no_grad():
            for lora in model.loras:
                lora.B[-1].normal_(0, 0.05)
    model.fold(2)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        fast = model(x, layers=True)
        model.fast_inference, model.cls_only_last = False, False
        slow = model(x, layers=True)
    torch.testing.assert_close(fast.layers, slow.layers, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-5, atol=1e-5)
    assert isinstance(onednn_available(), bool)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in ("", "default")
                    and torch.cpu._is_avx512_supported(),
                    reason="ATEN_CPU_CAPABILITY forced below this AVX-512 CPU's (emulating an AVX2 one): torch.compile's "
                           "generated code then disagrees with ATen and gives NaN (torch 2.14); a real AVX2 CPU runs this")
def test_compiled_backbone_matches_eager():
    """train.compile=true: torch.compile of the blocks gives the eager values (inference and training forward)."""
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch16_224", False, img_size=32,
                     timm_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})
    model = CILModel(vit, 2, ["k", "v"]).eval()
    model.add_task(3)
    with torch.no_grad():
        model.loras[0].B[0].normal_(0, 0.1)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        eager = model(x, layers=True)
    eager_grad = model(x, layers=True).layers
    model.compile_backbone()
    with torch.no_grad():
        compiled = model(x, layers=True)
    compiled_grad = model(x, layers=True).layers
    torch.testing.assert_close(compiled.layers, eager.layers, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-4)
