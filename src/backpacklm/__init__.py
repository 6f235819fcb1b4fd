"""backpacklm: language models that can be read and steered.

Importing the package registers the `backpack` model type with AutoConfig / AutoModelForCausalLM, so
`AutoModelForCausalLM.from_pretrained(directory)` loads a Backpack without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .errors import BackpackError
from .model import PRESETS, BackpackConfig, BackpackForCausalLM, BackpackOutput

AutoConfig.register("backpack", BackpackConfig, exist_ok=True)
AutoModelForCausalLM.register(BackpackConfig, BackpackForCausalLM, exist_ok=True)

__all__ = ["PRESETS", "BackpackConfig", "BackpackError", "BackpackForCausalLM", "BackpackOutput"]
__version__ = "0.1.0"
