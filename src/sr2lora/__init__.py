"""sr2lora: class-incremental learning on pre-trained ViTs with per-task LoRA (SR²-LoRA and baselines)."""

__version__ = "0.1.0"

_LAZY = {"load_run": "inference.load", "export_run": "inference.export"}


def __getattr__(name: str):
    """``sr2lora.load_run`` and ``sr2lora.export_run``, imported on first use so ``import sr2lora`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
