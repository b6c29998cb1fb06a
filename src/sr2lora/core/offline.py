"""The one offline switch: whether sr2lora may reach the network (hub weights, split lists) at all.

Rule: sr2lora is offline when ``SR2LORA_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value (``1``, ``true``,
``yes`` or ``on``, any case; anything else, or unset, is false). ``HF_HUB_OFFLINE`` counts too because under it
the Hugging Face hub refuses downloads anyway, so a check that ignored it would only fail later and slower. With
either set, what would need the network fails at once with a message naming the local alternative.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = ("SR2LORA_OFFLINE", "HF_HUB_OFFLINE")
TRUE_VALUES = ("1", "true", "yes", "on")


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


def offline_reason() -> str | None:
    """The variables that make sr2lora offline, as ``NAME=value`` (comma-separated), or None when online."""
    set_ = [f"{name}={os.environ[name]}" for name in OFFLINE_VARIABLES if _true(os.environ.get(name))]
    return ", ".join(set_) or None


def is_offline() -> bool:
    """True when ``SR2LORA_OFFLINE`` or ``HF_HUB_OFFLINE`` is true (see the module docstring)."""
    return offline_reason() is not None
