"""train.precision=auto: bf16 only where the device computes it natively, decided from capability flags."""

import warnings

import pytest
import torch

from conftest import read_results, run_cli
from sr2lora.core import hardware
from sr2lora.core.hardware import Capabilities, choose_precision, probe, resolve_precision

AVX2 = Capabilities("cpu", "AVX2")
AVX512 = Capabilities("cpu", "AVX512")  # AVX-512 without its bf16 extension: still emulated
AVX512_BF16 = Capabilities("cpu", "AVX512", cpu_avx512_bf16=True)
AMX = Capabilities("cpu", "AVX512", cpu_avx512_bf16=True, cpu_amx=True)
AMX_ONLY = Capabilities("cpu", "AVX512", cpu_amx=True)
GPU_BF16 = Capabilities("cuda", "AVX2", cuda_bf16=True, device_name="NVIDIA H200")
GPU_NO_BF16 = Capabilities("cuda", "AVX2", cuda_bf16=False, device_name="Tesla V100")


@pytest.mark.parametrize(
    "caps, expected",
    [(AVX2, "fp32"), (AVX512, "fp32"), (AVX512_BF16, "bf16"), (AMX, "bf16"), (AMX_ONLY, "bf16"),
     (GPU_BF16, "bf16"), (GPU_NO_BF16, "fp32")],
)
def test_auto_resolves_from_capabilities(caps, expected):
    precision, warning = resolve_precision("auto", caps)
    assert precision == expected
    assert warning is None


@pytest.mark.parametrize("caps", [AVX2, AVX512, AVX512_BF16, AMX, GPU_BF16, GPU_NO_BF16])
def test_explicit_fp32_is_kept_without_warning(caps):
    assert resolve_precision("fp32", caps) == ("fp32", None)


@pytest.mark.parametrize("caps", [AVX512_BF16, AMX, GPU_BF16])
def test_explicit_bf16_on_native_hardware_has_no_warning(caps):
    assert resolve_precision("bf16", caps) == ("bf16", None)


@pytest.mark.parametrize("caps", [AVX2, AVX512])
def test_explicit_bf16_on_emulating_cpu_runs_with_a_warning_naming_the_cost_and_the_fix(caps):
    precision, warning = resolve_precision("bf16", caps)
    assert precision == "bf16"  # the user's choice is honoured
    assert "14x slower" in warning
    assert "train.precision=auto" in warning and "train.precision=fp32" in warning


def test_explicit_bf16_on_gpu_without_bf16_warns():
    precision, warning = resolve_precision("bf16", GPU_NO_BF16)
    assert precision == "bf16" and "Tesla V100" in warning


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("fp16", AVX2)


def test_the_bf16_warning_is_emitted_once(monkeypatch):
    monkeypatch.setattr(hardware, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose_precision("bf16", AVX2) == "bf16"
        assert choose_precision("bf16", AVX2) == "bf16"
        assert choose_precision("auto", AVX2) == "fp32"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no native bf16" in messages[0]


def test_probe_reads_this_machine():
    caps = probe(torch.device("cpu"))
    assert caps.device_type == "cpu"
    assert caps.cpu_capability == torch.backends.cpu.get_cpu_capability()
    flags = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    # a CPU restricted to AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2, as when an AVX2 machine is emulated) emulates bf16
    capped = hardware.onednn_isa_cap() in ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                           "AVX512_CORE_VNNI")
    assert caps.native_bf16 == (flags and not capped)


@pytest.mark.slow
def test_auto_run_records_what_it_chose(tmp_path):
    out = tmp_path / "auto"
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", out, "train.epochs=1", "ca.epochs=1",
                   "train.threads=1") == 0
    r = read_results(out)
    expected, _ = resolve_precision("auto", probe(torch.device("cpu")))
    assert r["precision_requested"] == "auto"
    assert r["precision"] == expected
    assert r["task_precision"] == [expected] * r["num_tasks"]
    assert r["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r["threads"] == 1
    assert r["device_type"] == "cpu"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_report_never_averages_runs_of_different_precision(tmp_path, precision):
    """Two seeds of one setting, one trained in ``precision`` (forced), the other recorded as trained in the other
    precision (as `auto` gives on another kind of machine): the report keeps them apart and names the precision."""
    import json
    import shutil

    from sr2lora.report.collect import group_runs, read_run_result
    from sr2lora.runs.folder import discover_runs

    other_precision = "bf16" if precision == "fp32" else "fp32"
    base = tmp_path / precision
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", base, "train.epochs=1", "ca.epochs=1",
                   "train.threads=1", "scenario.init_cls=10", "scenario.increment=10",
                   f"train.precision={precision}") == 0
    assert read_results(base)["precision"] == precision and read_results(base)["eval_precision"] == "fp32"
    other = tmp_path / other_precision
    shutil.copytree(base, other)
    res = read_results(other)
    res.update(precision=other_precision, task_precision=[other_precision] * res["num_tasks"], seed=1)
    (other / "results.json").write_text(json.dumps(res))
    groups = group_runs([read_run_result(p) for p in discover_runs([tmp_path])])
    assert sorted(g.label for g in groups) == ["precision=bf16", "precision=fp32"]
    # a bf16 run from before evaluation was float32 (no eval_precision: it evaluated in bf16) is not pooled with a
    # newer bf16 run either
    bf16 = read_results(tmp_path / "bf16")
    bf16.pop("eval_precision")
    bf16["seed"] = 2
    older = tmp_path / "bf16-older"
    shutil.copytree(tmp_path / "bf16", older)
    (older / "results.json").write_text(json.dumps(bf16))
    groups = group_runs([read_run_result(p) for p in discover_runs([tmp_path])])
    assert sorted(g.label for g in groups) == ["eval_precision=bf16, precision=bf16",
                                               "eval_precision=fp32, precision=bf16", "eval_precision=fp32, precision=fp32"]


@pytest.mark.parametrize("cap,native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", None),
                                        (None, None)])
def test_probe_honours_a_cap_on_onednn_instructions(monkeypatch, cap, native):
    """``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16 makes oneDNN emulate bf16 on any CPU: such a machine counts
    as one without native bf16 (None: as the CPU's own flags say)."""
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    caps = probe(torch.device("cpu"))
    flags = bool(torch.cpu._is_avx512_bf16_supported())
    assert caps.cpu_avx512_bf16 == (flags if native is None else native)
    if native is False:
        assert resolve_precision("auto", caps)[0] == "fp32" and not caps.cpu_amx


def test_float32_evaluation_overrides_a_callers_autocast():
    x, w = torch.randn(8, 64), torch.randn(32, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = x @ w.T
        with hardware.float32_evaluation("cpu"):
            full = x @ w.T
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert torch.equal(full, x @ w.T)


def test_float32_evaluation_turns_tf32_off_on_cuda_and_restores_it():
    """cuDNN convolutions use TF32 by default: evaluation switches it off (the flags exist without a GPU too)."""
    settings = hardware._fp32_settings()
    before = [getattr(o, n) for o, n in settings]
    with hardware.float32_evaluation("cuda"):
        inside = [getattr(o, n) for o, n in settings]
    assert all(v in ("ieee", False) for v in inside)
    assert [getattr(o, n) for o, n in settings] == before
