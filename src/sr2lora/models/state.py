"""What the checkpoint keeps besides the training state, so a finished run can be used and checked later.

* ``heads.safetensors`` (group ``heads``): the concatenated heads as they were right after each task t
  (``heads_after_task_{t}.weight`` / ``.bias``, 0-based t). Classifier alignment rewrites all heads after every
  task, so the final checkpoint alone cannot give the model "as after task t"; these snapshots can (heads only:
  the LoRA branches 0..t never change after task t).
* ``backbone_sha256`` in ``state.json``: a hash of the frozen backbone weights (LoRA factors excluded). A run
  with ``model.pretrained=false`` stores no backbone weights: the backbone is rebuilt from the seeded random
  init, and this hash detects a rebuild that differs (another torch/timm version, changed weights file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .lora import LoRAQKV

HEADS_GROUP = "heads"


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


@torch.no_grad()
def head_snapshots(run_dir: Path, heads: nn.Module, t: int) -> dict[str, torch.Tensor]:
    """The ``heads`` group to save after task t: the snapshots of tasks < t from the checkpoint on disk plus
    the current heads 0..t (called by ``Trainer.save``; reading the previous file keeps resumed runs complete).
    """
    previous: dict[str, torch.Tensor] = {}
    path = Path(run_dir) / "checkpoint" / f"{HEADS_GROUP}.safetensors"
    if path.is_file():
        try:
            previous = load_file(str(path))
        except Exception:  # a damaged snapshot file only costs the older snapshots, never the run
            previous = {}
    keep = {k for s in range(t) for k in head_snapshot_keys(s)}
    out = {k: v for k, v in previous.items() if k in keep}
    weight, bias = heads.concatenated(t + 1)
    wk, bk = head_snapshot_keys(t)
    out[wk] = weight.detach().cpu().clone()
    out[bk] = bias.detach().cpu().clone()
    return out
