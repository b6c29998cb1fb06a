"""The lean forward of a plain timm ViT block, and the no-grad CPU kernels it uses.

Two things make the passes that need no gradient (the previous model's pass of every SR²-LoRA step, feature
extraction, evaluation) cheaper than running timm's modules as they are:

* Only the [CLS] token of the last block is used, so :func:`block_forward` with ``cls_only=True`` computes
  that block for token 0 alone (its keys and values still come from every token): ``blk(x)[:, :1]``. This is
  exact and is used with and without autograd.
* Without autograd, on an AVX-512 CPU in float32, :func:`linear` runs oneDNN's fused linear
  (``mkldnn::_linear_pointwise``, the kernel inductor uses on CPU): bias and GELU are applied inside the
  matmul instead of as separate passes over the output. Results equal ``F.linear`` (+ ``F.gelu``) to float32
  rounding (~1e-6 relative). On an AVX2-only CPU the same kernel measured 7-35% slower than ``F.linear`` for
  the ViT-S shapes (``benchmarks/linear.py``), so there, and anywhere else (autograd on, CUDA, autocast,
  other dtypes, ``torch.compile``, a build without oneDNN), it is ``F.linear``.

:func:`supports` says whether a block is the plain timm ``Block``/``Attention``/``Mlp`` these functions
reproduce; any other block runs its own ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ONEDNN: bool | None = None


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's fused CPU linear (checked once)."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            ok = torch.backends.mkldnn.is_available()
            if ok:
                x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
                ok = bool(torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b)))
            _ONEDNN = ok
        except (AttributeError, RuntimeError):
            _ONEDNN = False
    return _ONEDNN


def onednn_preferred(cpu_capability: str | None = None) -> bool:
    """Whether the fused kernel is worth using on a CPU of ``cpu_capability`` (default: this one's).

    Only the AVX-512 family: on AVX2 it measured slower than ``F.linear`` (``benchmarks/linear.py``).
    """
    cap = torch.backends.cpu.get_cpu_capability() if cpu_capability is None else cpu_capability
    return cap.startswith("AVX512")


# Whether gradient-free CPU passes use the fused kernel; tests switch it on to check its values on any CPU.
USE_ONEDNN: bool = onednn_preferred()


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        USE_ONEDNN
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor fuses F.linear + F.gelu itself
        and onednn_available()
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: str | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ``F.gelu(·, approximate=gelu)`` if ``gelu`` ('none'/'tanh') is set.

    Without autograd on CPU float32 this is one fused oneDNN call; otherwise the plain ops.
    """
    if _use_onednn(x, weight):
        if gelu is None:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], gelu)
    y = F.linear(x, weight, bias)
    return y if gelu is None else F.gelu(y, approximate=gelu)


def supports(blk: nn.Module) -> bool:
    """Whether :func:`block_forward` reproduces ``blk``: a plain timm ``Block``, ``Attention`` and ``Mlp``."""
    from timm.layers import LayerScale, Mlp
    from timm.models.vision_transformer import Attention, Block

    return (
        type(blk) is Block
        and type(blk.attn) is Attention
        and type(blk.mlp) is Mlp
        and all(type(m) in (LayerScale, nn.Identity) for m in (blk.ls1, blk.ls2))
    )


def _proj(layer: nn.Module, x: torch.Tensor, gelu: str | None = None) -> torch.Tensor:
    if type(layer) is nn.Linear:
        return linear(x, layer.weight, layer.bias, gelu)
    y = layer(x)  # e.g. LoRAQKV, which uses :func:`linear` itself
    return y if gelu is None else F.gelu(y, approximate=gelu)


def _residual(x: torch.Tensor, y: torch.Tensor, ls: nn.Module) -> torch.Tensor:
    gamma = getattr(ls, "gamma", None)
    return x + y if gamma is None else torch.addcmul(x, y, gamma)


def block_forward(blk: nn.Module, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
    """A plain timm ``Block`` (eval mode: no dropout, no drop-path) on tokens ``x`` (B, N, d).

    Returns ``blk(x)``, or with ``cls_only`` the [CLS] row only, (B, 1, d). Call only when :func:`supports`.
    """
    attn, mlp = blk.attn, blk.mlp
    h = blk.norm1(x)
    b, n, _ = h.shape
    qkv = _proj(attn.qkv, h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if cls_only:
        q, x, n = q[:, :, :1], x[:, :1], 1
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    a = attn.norm(a.transpose(1, 2).reshape(b, n, attn.attn_dim))
    if attn.gate is not None:
        a = a * attn.gate(h[:, :n]).sigmoid()
    x = _residual(x, _proj(attn.proj, a), blk.ls1)
    h = blk.norm2(x)
    act = mlp.act
    if type(act) is nn.GELU:
        h = _proj(mlp.fc1, h, act.approximate)
    else:
        h = act(_proj(mlp.fc1, h))
    h = _proj(mlp.fc2, mlp.norm(h))
    return _residual(x, h, blk.ls2)
