"""Finding finished runs: the run folders below the paths a user gives to ``report`` or ``analyze``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def discover_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders among ``paths``: a folder with results.json, or every such folder below a parent folder."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / "results.json").is_file():
            cands = [p]
        elif p.is_dir():
            cands = sorted(f.parent for f in p.rglob("results.json"))
        else:
            raise FileNotFoundError(f"{p}: no such folder")
        if not cands:
            raise FileNotFoundError(f"{p}: no run folder (results.json) in it")
        for c in cands:
            if c.resolve() not in {f.resolve() for f in found}:
                found.append(c)
    return found
