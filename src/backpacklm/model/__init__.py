"""Backpack and baseline Transformer models."""

from .config import PRESETS, BackpackConfig
from .modeling_backpack import BackpackForCausalLM, BackpackOutput

__all__ = ["PRESETS", "BackpackConfig", "BackpackForCausalLM", "BackpackOutput"]
