"""Checks that run before any heavy work (dataset scan, backbone, training), so a bad input fails in seconds.

:func:`preflight` is called by :class:`sr2lora.engine.Trainer` first thing. It checks what can be known
without reading images: the scenario against the class count of datasets whose count is fixed in code, that
a given ``data.root`` / ``data.split_file`` exists, and that the output folder can be created and written
(a probe file is written and removed). Everything else about the data is checked by the dataset builders
and :func:`sr2lora.data.integrity.drop_unreadable`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .data.base import DataError

if TYPE_CHECKING:
    from .config import RunConfig


class OutputError(RuntimeError):
    """The output folder cannot be created or written."""


def known_num_classes(dataset: str) -> int | None:
    """The class count of a dataset whose classes are fixed in code (no folder scan needed), else None."""
    if dataset == "smoke":
        from .data.smoke import SMOKE_CLASSES

        return SMOKE_CLASSES
    if dataset == "cifar100":
        return 100
    if dataset == "openclipart":
        from .data.openclipart import CURATED_CLASSES

        return len(CURATED_CLASSES)
    return None


def check_scenario(cfg: RunConfig) -> None:
    """Raise ConfigError if the scenario cannot cut a dataset with a known class count (same rules and
    messages as :func:`sr2lora.data.scenario.build_scenario`, which re-checks once the dataset is built)."""
    n = known_num_classes(cfg.data.dataset)
    if n is not None:
        from .data.scenario import build_scenario

        build_scenario(n, cfg.scenario, cfg.seed)


def check_data_paths(cfg: RunConfig) -> None:
    """Raise DataError naming ``data.root`` / ``data.split_file`` when given but missing."""
    d = cfg.data
    if d.root and d.dataset != "smoke":
        root = Path(d.root).expanduser()
        if not root.exists() and not (d.download and d.dataset == "cifar100"):
            raise DataError(
                f"data.root: {root} does not exist (data.dataset={d.dataset}); point data.root at the dataset's folder"
            )
    if d.split_file and not Path(d.split_file).expanduser().is_file():
        raise DataError(f"data.split_file: {Path(d.split_file).expanduser()} is not a file")


def check_output_writable(out_dir: str | Path) -> None:
    """Create ``out_dir`` (with parents) and write, fsync and remove a probe file; OutputError if any fails."""
    out = Path(out_dir)
    probe = out / f".sr2lora-write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"sr2lora write probe\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(
            f"output folder {out}: cannot create or write it ({exc.strerror or exc}); choose another with --out"
        ) from exc
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def preflight(cfg: RunConfig, out_dir: str | Path | None) -> None:
    """All cheap checks, config first, then data paths, then the output folder."""
    check_scenario(cfg)
    check_data_paths(cfg)
    if out_dir is not None:
        check_output_writable(out_dir)
