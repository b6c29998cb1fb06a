"""What the reference-fixture scripts share: arguments, the checkout on sys.path, and the minimal shims.

Every script in this folder is run by hand with a local checkout of one reference repository (CI never needs
one) and writes one ``tests/fixtures/reference/<name>.safetensors``; nothing of the reference's code is copied
into this repository. The shims below only let the reference's own code run on a CPU with today's torch/timm;
each script lists the ones it uses and what they change.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
for sub in ("src", "tests"):  # our package and the shared micro setting (tests/reference_setup.py)
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

import reference_setup as setup  # noqa: E402


def parse_args(description: str, repo: str) -> argparse.Namespace:
    """``--checkout PATH`` (the reference's files) and ``--commit SHA`` (read with git when omitted)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--checkout", required=True, type=Path, help=f"local checkout of github.com/{repo}")
    p.add_argument("--commit", default=None, help="the checkout's commit (default: git rev-parse HEAD there)")
    args = p.parse_args()
    if not args.checkout.is_dir():
        p.error(f"--checkout {args.checkout}: not a folder")
    if args.commit is None:
        try:
            args.commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"], check=True,
                                         capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            p.error("--commit: the checkout is not a git work tree; give the commit it was taken from")
    args.repo = repo
    sys.path.insert(0, str(args.checkout))
    return args


def ensure_micro_vit() -> Path:
    """Write the shared micro ViT weights once (seeded); every fixture is computed from them."""
    from safetensors.torch import save_file

    path = setup.FIXTURES / setup.MICRO_VIT
    if not path.exists():
        setup.FIXTURES.mkdir(parents=True, exist_ok=True)
        vit = setup.new_micro_vit()
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path),
                  metadata={"timm": setup.TIMM_NAME, "timm_kwargs": str(setup.TIMM_KWARGS), "seed": "0"})
    return path


def metadata(args: argparse.Namespace, script: str, **extra: Any) -> dict[str, Any]:
    """The fixture's metadata: the reference repository and commit, the script, the micro ViT's hash."""
    return {"reference_repo": f"github.com/{args.repo}", "reference_commit": args.commit,
            "script": f"tools/reference/{script}", "micro_vit_sha256": setup.file_sha256(ensure_micro_vit()),
            "torch": torch.__version__, **extra}


def stub_modules(*names: str) -> None:
    """Shim: empty modules for imports the reference makes but the code used here never calls (e.g. einops)."""
    import importlib.machinery
    import types

    def missing(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return None  # `from stub import name` gets None; calling it would fail loudly

    for name in names:
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__getattr__ = missing  # type: ignore[attr-defined]
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch's import scans want a spec
            sys.modules[name] = mod


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """Shim: ``.cuda()`` on modules and tensors returns them unchanged and a tensor's ``.to('cuda')`` stays on
    the CPU (the references call them unconditionally)."""
    saved = torch.nn.Module.cuda, torch.Tensor.cuda, torch.Tensor.to
    to = torch.Tensor.to

    def to_cpu(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:  # .to('cuda') / .to(device='cuda')
        a = tuple("cpu" if isinstance(v, str) and v.startswith("cuda") else v for v in a)
        if isinstance(k.get("device"), str) and k["device"].startswith("cuda"):
            k["device"] = "cpu"
        return to(self, *a, **k)

    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.Tensor.to = to_cpu  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.cuda, torch.Tensor.cuda, torch.Tensor.to = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def files_in_memory(*modules: Any) -> Iterator[dict[str, Any]]:
    """Shim: the modules' ``torch.save``/``torch.load`` keep objects in a dict keyed by path (deep copies)
    instead of pickling them to disk: the references hand state between tasks through files."""
    store: dict[str, Any] = {}

    class _Torch:
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

        @staticmethod
        def save(obj: Any, path: str) -> None:
            store[str(path)] = copy.deepcopy(obj)

        @staticmethod
        def load(path: str, *a: Any, **k: Any) -> Any:
            return copy.deepcopy(store[str(path)])

    saved = [m.torch for m in modules]
    for m in modules:
        m.torch = _Torch()
    try:
        yield store
    finally:
        for m, t in zip(modules, saved):
            m.torch = t


def use_micro_encoder(ref_sinet: Any, micro: torch.nn.Module) -> None:
    """Shim for the SiNet-based references (SR²-LoRA's ``sinet_dlora``, InfLoRA's ``sinet_inflora``): their
    ``ViT_lora_co`` encoder is built at the micro ViT's size and loaded with its weights instead of a ViT-B."""
    dim, depth = micro.num_features, len(micro.blocks)

    def micro_encoder(variant, pretrained=False, **kwargs):  # noqa: ANN001
        enc = ref_sinet.ViT_lora_co(img_size=setup.IMAGE_SIZE, patch_size=setup.TIMM_KWARGS["patch_size"],
                                    embed_dim=dim, depth=depth, num_heads=setup.TIMM_KWARGS["num_heads"],
                                    num_classes=0, n_tasks=kwargs["n_tasks"], rank=kwargs["rank"])
        missing, unexpected = enc.load_state_dict(micro.state_dict(), strict=False)
        # its LoRA factors and the unused "_grow" tokens are the only weights the micro ViT lacks
        assert not unexpected and all("lora_" in k or k.endswith("_grow") for k in missing), (missing, unexpected)
        return enc

    ref_sinet._create_vision_transformer = micro_encoder
