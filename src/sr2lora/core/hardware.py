"""What the machine computes natively, and the precision ``train.precision=auto`` resolves to.

bf16 autocast only pays off where the hardware has bf16 arithmetic: a CUDA device that supports it, or a CPU
with AVX512-BF16 or AMX. Elsewhere oneDNN emulates bf16 and is far slower than fp32 (measured on a 2-vCPU
AVX2-only AMD EPYC with ``benchmarks/precision.py``: one ViT-S/14 training step at 56 px, batch 32, took 39.1 s
under bf16 against 2.7 s in fp32, 14x). So ``auto`` decides from the capability flags torch exposes, never from a timing, and an explicit ``bf16``
on such a CPU runs with one warning. :func:`resolve_precision` is pure (capabilities in, decision out) so that
every case can be tested on any machine; :func:`probe` reads the capabilities of this one.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")
EVAL_PRECISION = "fp32"  # evaluation, class statistics, analyses, reload and export (the policy above)
# oneDNN's instruction sets from which bf16 is computed natively (ONEDNN_MAX_CPU_ISA values and aliases)
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                     "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL",
                     "DEFAULT"}
_ONEDNN_AMX_ISAS = {"AVX512_CORE_AMX", "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16",
                    "AVX10_2_512_AMX_2", "ALL", "DEFAULT"}
BF16_EMULATED_SLOWDOWN = (
    "this CPU has no native bf16 (no AVX512-BF16, no AMX), so bf16 autocast is emulated: one ViT-S/14 training "
    "step measured 14x slower than fp32 on such a CPU. Use train.precision=auto (fp32 here) or "
    "train.precision=fp32."
)


@dataclass(frozen=True)
class Capabilities:
    """The facts the precision rule needs, as torch reports them."""

    device_type: str  # "cpu" or "cuda"
    cpu_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): DEFAULT | AVX2 | AVX512 | ...
    cpu_avx512_bf16: bool = False
    cpu_amx: bool = False
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported() of the run's device
    device_name: str = ""  # the GPU's name (CUDA only)

    @property
    def native_bf16(self) -> bool:
        """Whether the run's device computes bf16 in hardware."""
        if self.device_type == "cuda":
            return self.cuda_bf16
        return self.cpu_avx512_bf16 or self.cpu_amx


def resolve_precision(requested: str, caps: Capabilities) -> tuple[str, str | None]:
    """(``fp32`` | ``bf16``, a warning or None) for ``train.precision=requested`` on a device with ``caps``."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return ("bf16" if caps.native_bf16 else "fp32"), None
    if requested == "bf16" and not caps.native_bf16:
        if caps.device_type == "cuda":
            return "bf16", (f"train.precision=bf16: the GPU {caps.device_name or ''} does not support bf16 natively; "
                            "use train.precision=auto or fp32.")
        return "bf16", f"train.precision=bf16: {BF16_EMULATED_SLOWDOWN}"
    return requested, None


def resolve_device(name: str) -> torch.device:
    """``train.device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) as a torch device: ``auto`` is the GPU when
    torch sees one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# torch's intra-op thread count when sr2lora was imported: what ``train.threads=0`` means. Captured once, so a run in
# this process that set another count does not change what the next run with ``threads=0`` computes with.
DEFAULT_THREADS = torch.get_num_threads()


def run_threads(requested: int) -> int:
    """The intra-op thread count a run computes with: ``train.threads``, or :data:`DEFAULT_THREADS` for 0."""
    return requested if requested > 0 else DEFAULT_THREADS


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def oversubscription_note(threads: int) -> str | None:
    """A note when ``train.threads`` asks for more threads than this process has cores, else None."""
    cores = usable_cores()
    if threads <= cores:
        return None
    return (f"train.threads={threads} is more than the {cores} core(s) this process may use: the threads wait for "
            f"each other (the smoke preset took 17 s with 64 threads against 5 s with 2 on a 2-core machine); use "
            f"train.threads=0 (torch's default) or at most {cores}")


def compute_record(caps: Capabilities, precision: str, threads: int, eval_batch_size: int) -> dict[str, object]:
    """Where and how a task computed: what changes the last bits of a run's numbers although it is no part of the
    experiment (the device and its kind, the thread count, the evaluation batch's shape, the training precision).
    Recorded per task; a resume that would compute otherwise is refused unless asked for (sr2lora.launch)."""
    where = f"cuda ({caps.device_name})" if caps.device_type == "cuda" else f"cpu ({caps.cpu_capability})"
    return {"device": where, "threads": int(threads), "eval_batch_size": int(eval_batch_size), "precision": precision}


def planned_compute(device: str, precision: str, threads: int, eval_batch_size: int) -> dict[str, object]:
    """:func:`compute_record` of a run with ``train.device``, ``train.precision``, ``train.threads`` and
    ``train.eval_batch_size`` on this machine, without building anything (no warning is printed)."""
    caps = probe(resolve_device(device))
    return compute_record(caps, resolve_precision(precision, caps)[0], run_threads(threads), eval_batch_size)


# the override that sets each entry of a compute record back, where one does (the device kind is the machine's)
COMPUTE_OVERRIDES = {"threads": "train.threads", "eval_batch_size": "train.eval_batch_size"}


def compute_changes(before: dict[str, object], now: dict[str, object]) -> list[str]:
    """What differs between two compute records, one phrase each (``threads 2 -> 1``)."""
    return [f"{k} {before.get(k)} -> {now.get(k)}" for k in now if k in before and before[k] != now[k]]


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``MemAvailable``), or None where that cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, what: str = "train.device") -> None:
    """ConfigError naming ``what`` (a config key or an option such as ``--device``) when ``name`` is not a device
    sr2lora knows or this machine does not have it; before any work, so it is never a traceback later."""
    from .errors import ConfigError

    sep = "=" if "." in what else " "
    if not _DEVICE_RE.match(str(name)):
        raise ConfigError(f"{what}: expected {DEVICE_FORMS}, got {name!r}")
    dev = str(name)
    if dev.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        if index >= n:
            have = f"{n} CUDA device(s)" if n else "no CUDA device (or this torch build has no CUDA)"
            raise ConfigError(f"{what}{sep}{dev}: this machine has {have}; use {what}{sep}auto or cpu")
    if dev == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}{sep}mps: MPS is not available here; use {what}{sep}auto or cpu")


def onednn_isa_cap() -> str | None:
    """The instruction-set cap oneDNN was given (``ONEDNN_MAX_CPU_ISA`` or its old name ``DNNL_MAX_CPU_ISA``), upper
    case, or None when there is none."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value and value.strip() else None


def probe(device: torch.device) -> Capabilities:
    """The capabilities of ``device`` on this machine (the CPU's bf16 flags as far as oneDNN may use them)."""
    cap = onednn_isa_cap()
    cpu = dict(
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()) and (cap is None or cap in _ONEDNN_BF16_ISAS),
        cpu_amx=bool(torch.cpu._is_amx_tile_supported()) and (cap is None or cap in _ONEDNN_AMX_ISAS),
    )
    if device.type == "cuda":
        return Capabilities("cuda", **cpu, cuda_bf16=bool(torch.cuda.is_bf16_supported()),
                            device_name=torch.cuda.get_device_name(device))
    return Capabilities(device.type, **cpu)


_WARNED: set[str] = set()


def choose_precision(requested: str, caps: Capabilities) -> str:
    """:func:`resolve_precision`, emitting its warning (once per process and message)."""
    precision, warning = resolve_precision(requested, caps)
    if warning is not None and warning not in _WARNED:
        _WARNED.add(warning)
        warnings.warn(warning, stacklevel=2)
    return precision


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of training in ``precision`` on ``device``: bf16 autocast for ``bf16``, a no-op
    otherwise. Nothing but training uses it (:data:`EVAL_PRECISION`)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _fp32_settings() -> list[tuple[object, str]]:
    """The (object, attribute) pairs that let CUDA compute float32 matmuls and convolutions in TF32."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(b.cudnn, "conv"):  # torch >= 2.9
        return [(b.cuda.matmul, "fp32_precision"), (b.cudnn.conv, "fp32_precision")]
    return [(b.cuda.matmul, "allow_tf32"), (b.cudnn, "allow_tf32")]


@contextmanager
def float32_evaluation(device: torch.device | str) -> Iterator[None]:
    """Compute in true float32 inside: no autocast (not even a caller's) and, on CUDA, no TF32 for matmuls and
    convolutions (cuDNN convolutions use TF32 by default). Everything that reads a trained model runs in it
    (:data:`EVAL_PRECISION`), so a reported accuracy does not depend on a global setting of the caller's."""
    device_type = torch.device(device).type
    settings = _fp32_settings() if device_type == "cuda" else []
    saved = [getattr(obj, name) for obj, name in settings]
    try:
        for obj, name in settings:
            setattr(obj, name, "ieee" if name == "fp32_precision" else False)
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        for (obj, name), value in zip(settings, saved):
            setattr(obj, name, value)


def describe(caps: Capabilities, precision: str, requested: str, threads: int,
             eval_precision: str = EVAL_PRECISION) -> dict[str, object]:
    """What ``results.json`` records about where and how a run computed: ``precision`` is training's,
    ``eval_precision`` that of the evaluation behind the reported accuracies."""
    out: dict[str, object] = {"precision": precision, "precision_requested": requested,
                              "eval_precision": eval_precision, "threads": threads, "device_type": caps.device_type}
    if caps.device_type == "cuda":
        out["device_name"] = caps.device_name
    out["cpu_capability"] = caps.cpu_capability
    out["cpu_native_bf16"] = caps.cpu_avx512_bf16 or caps.cpu_amx
    return out


def summary_line(caps: Capabilities, precision: str, requested: str, threads: int) -> str:
    """One line for the start of a run: device, CPU kind, threads and the precision chosen."""
    if caps.device_type == "cuda":
        where = f"cuda ({caps.device_name}, bf16 {'native' if caps.cuda_bf16 else 'not native'})"
    else:
        flags = [f for f, on in (("AVX512-BF16", caps.cpu_avx512_bf16), ("AMX", caps.cpu_amx)) if on]
        where = f"cpu ({caps.cpu_capability}, {'native bf16: ' + '+'.join(flags) if flags else 'no native bf16'})"
    how = f"{precision} (from auto)" if requested == "auto" else precision
    return f"device {where}, {threads} threads, precision {how}, evaluation {EVAL_PRECISION}"


def as_dict(caps: Capabilities) -> dict[str, object]:
    """The capabilities as plain JSON values (benchmarks record them)."""
    return asdict(caps)
