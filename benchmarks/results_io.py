"""Where the benchmarks write their JSON: ``--json PATH``, else ``benchmarks/results/<default name>``.

Every result also records the CPU it ran on (capability, native bf16 or not): a timing means little without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sr2lora.core.hardware import as_dict, probe

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The CPU's capabilities as torch sees them (``cpu_capability``: DEFAULT | AVX2 | AVX512, native bf16 flags)."""
    caps = as_dict(probe(torch.device("cpu")))
    caps.pop("device_type")
    caps["cpu_native_bf16"] = bool(caps["cpu_avx512_bf16"] or caps["cpu_amx"])
    return caps


def write_result(result: dict, json_arg: str | None, default_name: str) -> Path:
    """Write ``result`` (plus ``machine``) as indented JSON to ``json_arg`` or ``RESULTS/default_name``; return it."""
    path = Path(json_arg) if json_arg else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine())
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")
    return path
