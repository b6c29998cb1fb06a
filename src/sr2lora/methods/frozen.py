"""`frozen`: no LoRA at all; the frozen backbone's features with per-task heads and classifier alignment.

The lower bound every LoRA method must beat: if a method does not beat `frozen`, it forgets less only because it
does not adapt.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Method, register_method


@register_method
class Frozen(Method):
    name = "frozen"
    summary = "frozen backbone + per-task heads + classifier alignment (no LoRA)"
    uses_lora: ClassVar[bool] = False
