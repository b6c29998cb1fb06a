"""sr2lora: class-incremental learning on pre-trained ViTs with per-task LoRA (SR²-LoRA and baselines)."""

import os as _os

# Without a passive OpenMP wait policy, 2 threads run 2–6× slower than 1 on small CPU machines; this must be
# set before torch is imported to take effect.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {"load_run": "export", "export_run": "export"}


def __getattr__(name: str):
    """``sr2lora.load_run`` and ``sr2lora.export_run``, imported on first use so ``import sr2lora`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
