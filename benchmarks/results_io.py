"""Where the benchmarks write their JSON: ``--json PATH``, else ``benchmarks/results/<default name>``."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(result: dict, json_arg: str | None, default_name: str) -> Path:
    """Write ``result`` as indented JSON to ``json_arg`` (or ``RESULTS/default_name``), say where, return it."""
    path = Path(json_arg) if json_arg else RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")
    return path
