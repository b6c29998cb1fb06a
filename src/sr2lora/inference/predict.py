"""Classify image files with a finished run: top-k class names and probabilities per file.

Folders are searched recursively for image files (jpg/jpeg/png/bmp/gif/webp/tif/tiff, hidden files skipped);
files named explicitly are always tried. A file that cannot be decoded gets an ``error`` entry instead of
predictions: one bad file never stops the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.base import DataError
from ..data.decode import open_rgb8
from ..data.folders import list_images
from .export import LoadedRun, load_run


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], int]:
    """(files to classify in argument order, folders expanded and sorted; non-image files skipped in folders).

    A path that does not exist is a :class:`DataError`: it is a typo, not a bad image.
    """
    files: list[Path] = []
    skipped = 0
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found, n_skip = list_images(path)
            skipped += n_skip
        elif path.exists():
            found = [path]
        else:
            raise DataError(f"{raw}: no such file or folder")
        for f in found:
            if f not in seen:
                seen.add(f)
                files.append(f)
    if not files:
        raise DataError(f"no image files in {', '.join(str(p) for p in inputs)}")
    return files, skipped


def _load(path: Path, transform) -> torch.Tensor:
    return transform(open_rgb8(path))  # regular files only; 16-bit and float images scaled to 8 bit


@torch.no_grad()
def predict(
    run_dir: str | Path | LoadedRun,
    inputs: Sequence[str | Path],
    top_k: int = 5,
    task: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Top-k predictions for every image in ``inputs`` (files and folders), in input order.

    Each entry is ``{"file", "predictions": [{"name", "label", "probability"}, ...]}`` (softmax over all the
    run's classes, best first), or ``{"file", "error"}`` when the file is not a readable image. ``run_dir`` may
    also be a :class:`LoadedRun` (to classify several batches without reloading).
    """
    if top_k < 1:
        raise DataError(f"--top-k {top_k}: must be at least 1")
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    files, _ = expand_inputs(inputs)
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir, task=task, device=device)
    model, names = run.model, run.class_names
    dev = next(model.parameters()).device
    k = min(top_k, len(names))
    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress, leave=False,
               dynamic_ncols=True)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        entries: list[dict[str, Any]] = []
        tensors, slots = [], []
        for f in chunk:
            entry: dict[str, Any] = {"file": str(f)}
            try:
                tensors.append(_load(f, run.transform))
                slots.append(entry)
            except Exception as exc:  # PIL raises many types for unreadable or non-image files
                entry["error"] = f"not a readable image ({type(exc).__name__}: {exc})"
            entries.append(entry)
        if tensors:
            probs = model(torch.stack(tensors).to(dev)).float().softmax(-1).cpu()
            top_p, top_i = probs.topk(k, dim=-1)
            for entry, ps, ids in zip(slots, top_p.tolist(), top_i.tolist()):
                entry["predictions"] = [
                    {"name": names[i], "label": int(i), "probability": float(p)} for p, i in zip(ps, ids)
                ]
        out.extend(entries)
        bar.update(len(chunk))
    bar.close()
    return out


def format_prediction(entry: dict[str, Any]) -> str:
    """One line: ``file: name (p%), name (p%) ...`` or ``file: error: ...``."""
    if "error" in entry:
        return f"{entry['file']}: error: {entry['error']}"
    preds = ", ".join(f"{p['name']} ({100 * p['probability']:.1f}%)" for p in entry["predictions"])
    return f"{entry['file']}: {preds}"
