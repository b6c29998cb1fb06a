"""What a checkpoint keeps of the model, so a run can resume and a finished run be used and checked later.

* The trained weights (:func:`stored_weights`): the LoRA factors and the heads, never the frozen backbone, which is
  rebuilt from the config (:mod:`sr2lora.models.build`); :func:`restore_weights` puts them back into a rebuilt
  model.
* The head snapshots (group ``heads``): the concatenated heads as they were right after each task t
  (``heads_after_task_{t}.weight`` / ``.bias``, 0-based t). Classifier alignment rewrites all heads after every
  task, so the final checkpoint alone cannot give the model "as after task t"; these snapshots can (heads only:
  the LoRA branches 0..t never change after task t).
* ``backbone_sha256`` in ``state.json``: a hash of the frozen backbone weights (LoRA factors excluded). A run
  with ``model.pretrained=false`` stores no backbone weights: the backbone is rebuilt from the seeded random
  init, and this hash detects a rebuild that differs (another torch/timm version, changed weights file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core.errors import CheckpointError
from .lora import LoRAQKV

if TYPE_CHECKING:
    from .backbone import CILModel


def head_snapshot_keys(t: int) -> tuple[str, str]:
    """(weight key, bias key) of the head snapshot taken after task t (0-based)."""
    return f"heads_after_task_{t}.weight", f"heads_after_task_{t}.bias"


def plain_backbone_state(vit: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state with timm's own key names: LoRA factors dropped, ``qkv.base.*`` renamed ``qkv.*``.

    Values are the frozen pre-trained weights (nothing folded).
    """
    lora_prefixes = [name + "." for name, m in vit.named_modules() if isinstance(m, LoRAQKV)]
    out: dict[str, torch.Tensor] = {}
    for key, value in vit.state_dict().items():
        prefix = next((p for p in lora_prefixes if key.startswith(p)), None)
        if prefix is not None:
            rest = key[len(prefix):]
            if rest.startswith(("A.", "B.")):
                continue
            if rest.startswith("base."):
                key = prefix + rest[len("base."):]
        out[key] = value
    return out


@torch.no_grad()
def backbone_sha256(vit: nn.Module) -> str:
    """sha256 over the frozen backbone weights (names, dtypes, shapes, bytes), independent of LoRA wrapping."""
    h = hashlib.sha256()
    for key, value in sorted(plain_backbone_state(vit).items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def snapshots_by_task(group: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{t: (weight, bias)} of the heads as after task t, from a checkpoint's ``heads`` group (tasks 0, 1, ... as
    far as they are complete)."""
    out = {}
    t = 0
    while all(k in group for k in head_snapshot_keys(t)):
        wk, bk = head_snapshot_keys(t)
        out[t] = (group[wk], group[bk])
        t += 1
    return out


@torch.no_grad()
def head_snapshots(previous: dict[str, torch.Tensor], heads: nn.Module, t: int) -> dict[str, torch.Tensor]:
    """The head snapshots to save after task t: those of tasks < t from ``previous`` (the checkpoint on disk, so
    a resumed run stays complete) plus the current heads 0..t."""
    keep = {k for s in range(t) for k in head_snapshot_keys(s)}
    out = {k: v for k, v in previous.items() if k in keep}
    weight, bias = heads.concatenated(t + 1)
    wk, bk = head_snapshot_keys(t)
    out[wk] = weight.detach().cpu().clone()
    out[bk] = bias.detach().cpu().clone()
    return out


# ---------------------------------------------------------------- the trained weights


def is_stored_weight(key: str) -> bool:
    """Whether model state ``key`` is saved in the checkpoint: everything but the frozen backbone (LoRA factors
    ``vit.….A.s`` / ``.B.s`` and the heads), which is rebuilt from config.yaml instead."""
    return not key.startswith("vit.") or ".A." in key or ".B." in key


def stored_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of ``model``'s state dict the checkpoint keeps (``model.safetensors``)."""
    return {k: v for k, v in model.state_dict().items() if is_stored_weight(k)}


def restore_weights(model: CILModel, weights: dict[str, torch.Tensor], task_sizes: Sequence[int],
                    device: torch.device | str, where: str | Path) -> None:
    """Give ``model`` (as built, no task yet) one task of each size, load the saved ``weights`` into it, move it to
    ``device`` and fold every LoRA branch into the fixed weights (the model as after the last of these tasks).

    Every stored key must match: a missing LoRA factor or head, or a key the model lacks, is a
    CheckpointError naming ``where`` (the run folder).
    """
    for n in task_sizes:
        model.add_task(int(n))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if is_stored_weight(k)] + list(unexpected)
    if bad:
        raise CheckpointError(f"{where}: the checkpoint does not match the model rebuilt from the run's config: "
                              f"{bad[:5]}")
    model.to(device)
    model.fold()
