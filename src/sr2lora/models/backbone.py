"""A frozen timm ViT with per-task LoRA and per-task heads: the one model every method trains.

``CILModel.forward(x, tasks=n)`` runs the backbone with LoRA branches 0..n−1 active and returns the final
[CLS] feature, the per-layer [CLS] features (each block's output through the backbone's final LayerNorm: the
H(x) of docs/method.md) and the logits of heads 0..n−1 concatenated.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from ..core.errors import WeightsError
from ..core.offline import is_offline, offline_reason
from .fastpath import block_forward, supports
from .heads import TaskHeads
from .lora import LoRAQKV

IMGFOCUS_BACKBONE = "imgfocus-vits14"



@dataclass
class ForwardOut:
    feature: torch.Tensor  # (B, d): final [CLS] after the final norm
    layers: torch.Tensor | None  # (B, L, d): per-block [CLS] after the final norm
    logits: torch.Tensor | None  # (B, classes of the requested heads)


def _why_refused(message: str) -> str:
    """The informative line of torch's weights_only error (the offending global / opcode), or ''."""
    for line in message.splitlines():
        if "GLOBAL" in line or line.strip().startswith("Unsupported"):
            return line.strip()
    return ""


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, or any other file as a torch checkpoint unpickled with
    ``weights_only=True``.

    Only tensors and plain containers are accepted, so a file crafted to run code when unpickled is refused
    (a WeightsError) without running it. Wrappers ``{"state_dict"|"model"|"state_dict_ema"|"model_ema": ...}``
    and a ``module.`` prefix (DataParallel) are removed, as timm does.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError and friends
            raise WeightsError(
                f"model.pretrained: {path} is not a valid safetensors file ({exc}); nothing in it was executed"
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = _why_refused(str(exc))
        raise WeightsError(
            f"model.pretrained: refused to load {path}: unpickling it needs more than tensors"
            f"{f' ({why})' if why else ''}, which could run code; nothing in it was executed. Give weights as "
            f".safetensors (convert a file you trust with safetensors.torch.save_file)"
        ) from exc
    except Exception as exc:  # not a torch file at all, truncated zip, ...
        raise WeightsError(
            f"model.pretrained: cannot read {path} as a torch checkpoint ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0]})"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"model.pretrained: {path} holds no state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


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
            if path.suffix == ".npz":  # timm's npz loader (np.load, pickles not allowed)
                overlay: dict = {"file": str(path), "custom_load": True}
            else:  # read here (safetensors, or torch.load(weights_only=True)), whatever timm's version does
                overlay = {"state_dict": load_weights_file(path), "custom_load": False}
            vit = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
            for cfg_dict in (getattr(vit, "pretrained_cfg", None), getattr(vit, "default_cfg", None)):
                if isinstance(cfg_dict, dict):
                    cfg_dict.pop("state_dict", None)  # do not keep a second copy of the weights alive
            return vit
        if pretrained and is_offline():
            raise WeightsError(
                f"model.pretrained=true needs {name}'s weights from the Hugging Face hub, but sr2lora is offline "
                f"({offline_reason()}). "
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
        # Plain timm blocks run through models.fastpath: the last block for the [CLS] token only (exact), and
        # without autograd, on CPU, with fused oneDNN linears (fast_inference). False: timm's forward throughout.
        self.lean_blocks = [supports(blk) for blk in self.vit.blocks]
        self.cls_only_last = self.lean_blocks[-1]
        self.fast_inference = True
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

    # ---- the parametrisation seam for methods (see models/lora.py); layers are numbered as ``self.loras``
    def set_branch_scales(self, scales: torch.Tensor | Callable[[int], torch.Tensor]) -> None:
        """Multiply LoRA branch s by γ_s in every layer until :meth:`clear_branch_scales` (e.g. for one task).

        ``scales``: one tensor for every layer, shape (n,) or (n, n_targets); or a callable ``layer -> tensor``
        that each layer calls at each of its forwards, so γ can depend on trainable parameters (set it in
        ``before_task``, clear it in ``after_task``). See :meth:`LoRAQKV.set_branch_scales`.
        """
        for i, lora in enumerate(self.loras):
            lora.set_branch_scales((lambda layer=i: scales(layer)) if callable(scales) else scales)

    def clear_branch_scales(self) -> None:
        """Remove the scales of :meth:`set_branch_scales` in every layer (the plain, folded model again)."""
        for lora in self.loras:
            lora.clear_branch_scales()

    def set_down_projection(self, task: int, matrices: Sequence[torch.Tensor], target: str | None = None,
                            freeze: bool = False) -> None:
        """Task ``task``'s down-projection A in every layer: ``matrices[layer]`` (rank × d) for ``target``
        (None: every adapted target); ``freeze`` excludes it from training. See
        :meth:`LoRAQKV.set_down_projection`."""
        if len(matrices) != len(self.loras):
            raise ValueError(f"expected one down-projection per LoRA layer ({len(self.loras)}), "
                             f"got {len(matrices)}")
        for lora, m in zip(self.loras, matrices):
            lora.set_down_projection(task, m, target, freeze)

    @contextmanager
    def capture_qkv_inputs(
        self, on_input: Callable[[int, torch.Tensor], None] | None = None
    ) -> Iterator[list[list[torch.Tensor]]]:
        """Within the block, record the input (B, N, d) of every LoRA layer's qkv Linear at each forward.

        Yields one list per layer (``self.loras`` order) of the detached inputs, one per forward. With
        ``on_input(layer, x)`` the inputs go to the callback instead and nothing is stored (for statistics over a
        whole loader). Observation only: the model and its outputs are unchanged, and nothing stays registered
        on the model after the block.
        """
        inputs: list[list[torch.Tensor]] = [[] for _ in self.loras]

        def observer(layer: int):
            def hook(module: nn.Module, args: tuple) -> None:
                x = args[0].detach()
                if on_input is None:
                    inputs[layer].append(x)
                else:
                    on_input(layer, x)

            return hook

        handles = [lora.register_forward_pre_hook(observer(i)) for i, lora in enumerate(self.loras)]
        try:
            yield inputs
        finally:
            for h in handles:
                h.remove()

    def compile_backbone(self, **kwargs) -> None:
        """``torch.compile`` the blocks' forward (``train.compile=true``); ``kwargs`` go to ``torch.compile``.

        One graph per case (current/previous model, with/without autograd, task count), hence the raised
        recompilation limit. Opt-in: on CPU it costs minutes of compilation (see benchmarks/step.py --compile).
        """
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 1024)
        self._compiled_features = torch.compile(self.backbone_features, **kwargs)

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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen stem (patch embedding, position embedding, pre-norm): tokens (B, N, d), task-independent.

        Every forward of a batch starts from the same tokens, so a training step computes them once and hands
        them to both the current and the previous model's forward (``forward(..., tokens=...)``).
        """
        v = self.vit
        x = v.patch_embed(x)
        x = v._pos_embed(x)
        x = v.patch_drop(x)
        return v.norm_pre(x)

    def backbone_features(
        self, x: torch.Tensor, layers: bool = True, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(final [CLS] feature, per-layer [CLS] features or None) with the currently active branches.

        Only the [CLS] token of the last block is used, so the last block runs for that token only (its keys and
        values still come from every token), and passes without autograd use the fused CPU kernels; both through
        :func:`sr2lora.models.fastpath.block_forward` when the block is a plain timm ``Block``.
        """
        v = self.vit
        x = self.embed(x) if tokens is None else tokens
        per_layer = []
        last = len(v.blocks) - 1
        lean = self.fast_inference and not torch.is_grad_enabled()
        for i, blk in enumerate(v.blocks):
            cls_only = i == last and self.cls_only_last
            x = block_forward(blk, x, cls_only) if (cls_only or lean) and self.lean_blocks[i] else blk(x)
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
        tokens: torch.Tensor | None = None,
    ) -> ForwardOut:
        """Forward with LoRA branches 0..tasks−1 (default: all) and logits of heads 0..heads−1 (default: tasks).

        ``tokens``: the output of :meth:`embed` for ``x`` when the caller already has it (skips the stem).
        """
        n = self.num_tasks if tasks is None else tasks
        with self.active_tasks(n):
            features = getattr(self, "_compiled_features", None) or self.backbone_features
            feature, per_layer = features(x, layers=layers, tokens=tokens)
        out_logits = self.heads(feature, upto=n if heads is None else heads) if logits else None
        return ForwardOut(feature=feature, layers=per_layer, logits=out_logits)
