"""The tiny seeded setting shared by the reference fixtures (tools/reference/*.py write them, tests read them).

One micro ViT (timm ``vit_small_patch16_224`` shape-shifted to 32 px, patch 8, 32-d, 3 blocks, 2 heads, random
init under a fixed seed) whose weights are stored once in ``fixtures/reference/micro_vit.safetensors``, so the
reference's model and ours load the very same numbers; fixed batches of class-dependent images; and the
fixture files' reading and writing (safetensors, with the reference repository and commit in the metadata).
Nothing here imports reference code: the tests run without any checkout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
MICRO_VIT = "micro_vit.safetensors"
IMAGE_SIZE = 32
TIMM_NAME = "vit_small_patch16_224"
TIMM_KWARGS = {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
RANK = 10  # the SD-LoRA reference hard-codes rank 10; every fixture uses it


def overrides(method: str, *extra: str) -> list[str]:
    """Command-line overrides of the smoke preset that describe the micro setting for ``method``."""
    kw = ", ".join(f"{k}: {v}" for k, v in TIMM_KWARGS.items())
    return [f"method.name={method}", f"model.timm_kwargs={{{kw}}}", f"data.image_size={IMAGE_SIZE}",
            f"model.rank={RANK}", "train.precision=fp32", *extra]


def new_micro_vit(seed: int = 0) -> torch.nn.Module:
    """A freshly initialised micro ViT (only the fixture writer calls this; tests load the stored weights)."""
    from sr2lora.models.backbone import create_vit

    torch.manual_seed(seed)
    return create_vit(TIMM_NAME, False, img_size=IMAGE_SIZE, timm_kwargs=TIMM_KWARGS)


def micro_vit() -> torch.nn.Module:
    """The micro ViT with the stored weights (timm, no classifier, eval mode)."""
    from safetensors.torch import load_file

    vit = new_micro_vit()
    vit.load_state_dict(load_file(str(FIXTURES / MICRO_VIT)), strict=True)
    return vit.eval()


def micro_model(cfg: Any, uses_lora: bool = True):
    """Our CILModel around :func:`micro_vit`, with ``cfg``'s rank and LoRA targets."""
    from sr2lora.models.backbone import CILModel

    return CILModel(micro_vit(), rank=cfg.model.rank, targets=cfg.model.lora_targets, use_lora=uses_lora)


def batches(seed: int, classes: list[int], per_class: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed batches (images, labels) of ``per_class`` images of each of ``classes``: a class-specific
    pattern plus noise, in a seeded order, so that a few steps learn something and every run sees the same."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in classes:
        pattern = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1000 + c))
        xs.append(0.6 * pattern + 0.4 * torch.rand(per_class, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g))
        ys.append(torch.full((per_class,), c, dtype=torch.long))
    x, y = torch.cat(xs), torch.cat(ys)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_fixture(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``fixtures/reference/<name>.safetensors`` with string metadata (values JSON-encoded)."""
    from safetensors.torch import save_file

    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}.safetensors"
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(flat, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    return path


def read_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a fixture; metadata values decoded from JSON where they are JSON."""
    from safetensors import safe_open

    path = FIXTURES / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        raw = fh.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return tensors, meta
