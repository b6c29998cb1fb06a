"""The sweep folder's record, ``OUT/sweep.json``: the cells, and every attempt to run each (which launcher, the
job id or pid, the log, the exit status once known). ``sr2lora sweep --status`` reads it beside the run folders.

Several sweep processes may drive one folder at once (each takes the cells nobody runs): every change is a
read-modify-write of the file under an exclusive ``flock`` on ``OUT/.sweep.lock``, written atomically.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_json
from ..core.errors import OutputError
from .grid import Cell

RECORD = "sweep.json"
FORMAT = "sr2lora-sweep/1"


class SweepRecord:
    """The cells of a sweep folder and their attempts. ``doc`` is the content as last read or written; every
    change re-reads the file under the folder's lock first, so concurrent sweeps never lose each other's
    attempts (and the local launcher's threads are serialised by the same lock)."""

    def __init__(self, out: str | Path, doc: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        self.path = self.out / RECORD
        self.doc = doc or {"format": FORMAT, "cells": {}}
        self._threads = threading.Lock()

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"{path}: unreadable sweep record ({exc}); remove it to start the record again "
                              f"(the run folders are untouched)") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("cells"), dict):
            raise OutputError(f"{path}: not a sr2lora sweep record ({FORMAT}); remove it or choose another --out")
        return doc

    @classmethod
    def read(cls, out: str | Path) -> SweepRecord:
        """The record of the sweep folder ``out`` (an empty one when it has none)."""
        return cls(out, cls._load(Path(out) / RECORD))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.out.mkdir(parents=True, exist_ok=True)
        with self._threads, open(self.out / ".sweep.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _change(self, edit: Callable[[dict[str, Any]], None]) -> None:
        with self._locked():
            doc = self._load(self.path) or {"format": FORMAT, "cells": {}}
            edit(doc)
            atomic_write_json(self.path, doc)
            self.doc = doc

    def plan(self, cells: Sequence[Cell], argv: Sequence[str] | None = None) -> None:
        """Record the planned cells (keeping the attempts of cells planned before) and the command given."""

        def edit(doc: dict[str, Any]) -> None:
            for c in cells:
                entry = doc["cells"].setdefault(c.name, {"attempts": []})
                entry.update(out=str(c.out), preset=c.preset, overrides=list(c.overrides))
            if argv is not None:
                doc["command"] = list(argv)

        self._change(edit)

    def attempt(self, cell: Cell, **info: Any) -> None:
        """A new attempt at ``cell`` (launcher, job_id or pid, log, ...)."""
        started = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "t0": time.time()}
        self._change(lambda doc: doc["cells"].setdefault(cell.name, {"attempts": [], "out": str(cell.out)})
                     ["attempts"].append({**started, **info}))

    def ended(self, cell: Cell, exit_code: int, **match: Any) -> None:
        """The attempt at ``cell`` (the last one, or the last whose fields equal ``match``, e.g. its pid) ended
        with ``exit_code`` (known for the serial and local launchers)."""
        ended = {"ended": time.strftime("%Y-%m-%d %H:%M:%S"), "t1": time.time()}

        def edit(doc: dict[str, Any]) -> None:
            attempts = doc["cells"][cell.name]["attempts"]
            mine = [a for a in attempts if all(a.get(k) == v for k, v in match.items())] or attempts
            mine[-1].update(exit=int(exit_code), **ended)

        self._change(edit)

    def last_attempt(self, name: str) -> dict[str, Any] | None:
        attempts = self.doc["cells"].get(name, {}).get("attempts") or []
        return attempts[-1] if attempts else None

    def cell_names(self) -> list[str]:
        return list(self.doc["cells"])
