"""Where sr2lora keeps what it downloads or builds for offline use, and how it fingerprints files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import OutputError


def cache_dir(create: bool = True) -> Path:
    """sr2lora's cache folder: ``$SR2LORA_CACHE``, else ``$XDG_CACHE_HOME/sr2lora``, else ``~/.cache/sr2lora``.

    Converted weights, rendered datasets and downloaded split lists live below it.
    """
    env = os.environ.get("SR2LORA_CACHE")
    if env:
        path, source = Path(env).expanduser(), f"SR2LORA_CACHE={env}"
    else:
        base = os.environ.get("XDG_CACHE_HOME")
        path = (Path(base).expanduser() if base else Path.home() / ".cache") / "sr2lora"
        source = f"XDG_CACHE_HOME={base}" if base else "the cache folder"
    if path.exists() and not path.is_dir():
        raise OutputError(f"{source}: {path} is a file, not a folder; point SR2LORA_CACHE at a folder (or unset it)")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{source}: cannot create the cache folder {path} ({exc.strerror or exc}); point "
                              f"SR2LORA_CACHE at a folder you can write") from exc
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
