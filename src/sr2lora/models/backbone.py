"""A frozen timm ViT with per-task LoRA and per-task heads: the one model every method trains.

``CILModel.forward(x, tasks=n)`` runs the backbone with LoRA branches 0..n−1 active and returns the final
[CLS] feature, the per-layer [CLS] features (each block's output through the backbone's final LayerNorm: the
H(x) of METHOD.md) and the logits of heads 0..n−1 concatenated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .heads import TaskHeads
from .lora import LoRAQKV

IMGFOCUS_BACKBONE = "imgfocus-vits14"


class WeightsError(RuntimeError):
    """Pre-trained weights cannot be obtained; the message says how to point at a local file."""


@dataclass
class ForwardOut:
    feature: torch.Tensor  # (B, d): final [CLS] after the final norm
    layers: torch.Tensor | None  # (B, L, d): per-block [CLS] after the final norm
    logits: torch.Tensor | None  # (B, classes of the requested heads)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def create_vit(
    name: str, pretrained: bool | str, img_size: int | None = None, timm_kwargs: dict | None = None
) -> nn.Module:
    """A timm ViT without classifier. ``pretrained``: False, True (timm's hub weights) or a local file path."""
    kwargs = dict(timm_kwargs or {})
    if img_size is not None:
        kwargs.setdefault("img_size", img_size)
    if name == IMGFOCUS_BACKBONE:
        from .imgfocus import create_imgfocus_vit

        return create_imgfocus_vit(pretrained=bool(pretrained), **kwargs)
    try:
        if isinstance(pretrained, str):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise WeightsError(
                    f"model.pretrained: weights file {path} not found (give a .safetensors, .pth or .npz file "
                    f"for {name}, or model.pretrained=false)"
                )
            overlay = {"file": str(path)}
            if path.suffix == ".npz":
                overlay["custom_load"] = True
            elif path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
                overlay["custom_load"] = False
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
        if pretrained and _hub_offline():
            raise WeightsError(
                f"model.pretrained=true needs {name}'s weights from the Hugging Face hub, but HF_HUB_OFFLINE is set. "
                f"Download them elsewhere and pass model.pretrained=/path/to/weights.safetensors (or .npz/.pth)"
            )
        return timm.create_model(name, pretrained=bool(pretrained), num_classes=0, **kwargs)
    except WeightsError:
        raise
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise WeightsError(f"model.backbone: timm has no model {name!r} ({exc})") from exc
        raise WeightsError(f"model.pretrained: cannot load weights for {name}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"model.pretrained: cannot obtain weights for {name} ({type(exc).__name__}: {exc}). Without hub "
            f"access pass a local file: model.pretrained=/path/to/weights.safetensors"
        ) from exc


class CILModel(nn.Module):
    """Frozen ViT + per-task LoRA on every block's qkv + per-task linear heads."""

    def __init__(self, vit: nn.Module, rank: int, targets: Sequence[str], use_lora: bool = True) -> None:
        super().__init__()
        if getattr(vit, "global_pool", "token") != "token":
            raise ValueError("the backbone must pool its [CLS] token (timm global_pool='token')")
        self.vit = vit
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.use_lora = use_lora
        self.loras: list[LoRAQKV] = []
        if use_lora:
            for blk in self.vit.blocks:
                blk.attn.qkv = LoRAQKV(blk.attn.qkv, targets, rank)
                self.loras.append(blk.attn.qkv)
        self.embed_dim = int(self.vit.num_features)
        self.num_layers = len(self.vit.blocks)
        self.heads = TaskHeads(self.embed_dim)
        self.vit.eval()

    # The backbone always runs in eval mode (no dropout / drop-path), as the reference trains.
    def train(self, mode: bool = True) -> CILModel:
        super().train(mode)
        self.vit.eval()
        return self

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def add_task(self, num_classes: int) -> None:
        """New LoRA pair in every layer (if LoRA is used) and a new head for ``num_classes`` classes."""
        for lora in self.loras:
            lora.add_task()
        self.heads.add(num_classes)

    def fold(self, upto: int | None = None) -> None:
        """Fold LoRA branches 0..upto−1 (default all) into the fixed weights."""
        for lora in self.loras:
            lora.fold(upto)

    def set_folding(self, enabled: bool) -> None:
        for lora in self.loras:
            lora.fold_enabled = enabled

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        """Parameters owned by task t: its LoRA factors and its head."""
        params: list[nn.Parameter] = []
        for lora in self.loras:
            params += [lora.A[t], lora.B[t]]
        return params + list(self.heads[t].parameters())

    def lora_parameters(self, t: int) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for lora in self.loras:
            out += [lora.A[t], lora.B[t]]
        return out

    @contextmanager
    def active_tasks(self, n: int) -> Iterator[None]:
        """Run the backbone with LoRA branches 0..n−1 inside the block."""
        old = [lora.active for lora in self.loras]
        for lora in self.loras:
            lora.active = n
        try:
            yield
        finally:
            for lora, a in zip(self.loras, old):
                lora.active = a

    def backbone_features(self, x: torch.Tensor, layers: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(final [CLS] feature, per-layer [CLS] features or None) with the currently active branches."""
        v = self.vit
        x = v.patch_embed(x)
        x = v._pos_embed(x)
        x = v.patch_drop(x)
        x = v.norm_pre(x)
        per_layer = []
        for blk in v.blocks:
            x = blk(x)
            if layers:
                per_layer.append(v.norm(x[:, 0]))
        feature = per_layer[-1] if layers else v.norm(x[:, 0])
        feature = v.fc_norm(feature)
        return feature, (torch.stack(per_layer, dim=1) if layers else None)

    def forward(
        self,
        x: torch.Tensor,
        tasks: int | None = None,
        heads: int | None = None,
        layers: bool = False,
        logits: bool = True,
    ) -> ForwardOut:
        """Forward with LoRA branches 0..tasks−1 (default: all) and logits of heads 0..heads−1 (default: tasks)."""
        n = self.num_tasks if tasks is None else tasks
        with self.active_tasks(n):
            feature, per_layer = self.backbone_features(x, layers=layers)
        out_logits = self.heads(feature, upto=n if heads is None else heads) if logits else None
        return ForwardOut(feature=feature, layers=per_layer, logits=out_logits)
