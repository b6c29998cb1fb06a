"""`seqlora`: sequential per-task LoRA with classifier alignment and no regulariser (the plain baseline)."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class SeqLoRA(Method):
    name = "seqlora"
    summary = "per-task LoRA + classifier alignment, no regulariser"
