"""The frozen ViT with per-task LoRA and heads."""

from .backbone import CILModel, ForwardOut, WeightsError, create_vit
from .heads import TaskHeads
from .lora import LoRAQKV

__all__ = ["CILModel", "ForwardOut", "LoRAQKV", "TaskHeads", "WeightsError", "create_vit"]
