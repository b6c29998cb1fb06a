"""train.precision=auto: bf16 only where the device computes it natively, decided from capability flags."""

import warnings

import pytest
import torch

from conftest import read_results, run_cli
from sr2lora import hardware
from sr2lora.hardware import Capabilities, choose_precision, probe, resolve_precision

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
    assert caps.native_bf16 == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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


def test_report_never_averages_runs_of_different_precision(tmp_path):
    """Two seeds of one setting, one recorded as computed in bf16 (as `auto` gives on a CPU with native bf16):
    the report keeps them apart and names the precision."""
    import json
    import shutil

    from sr2lora.report import discover_runs, group_runs, load_run

    base = tmp_path / "fp32"
    assert run_cli("run", "--preset", "smoke", "--quiet", "--out", base, "train.epochs=1", "ca.epochs=1",
                   "train.threads=1", "scenario.init_cls=10", "scenario.increment=10") == 0
    other = tmp_path / "bf16"
    shutil.copytree(base, other)
    res = read_results(other)
    res.update(precision="bf16", task_precision=["bf16"] * res["num_tasks"], seed=1)
    (other / "results.json").write_text(json.dumps(res))
    groups = group_runs([load_run(p) for p in discover_runs([tmp_path])])
    labels = sorted(g.label for g in groups)
    assert len(groups) == 2 and labels == ["precision=bf16", f"precision={read_results(base)['precision']}"]
