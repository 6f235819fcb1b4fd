"""The baseline Transformer: the Backpack's GPT-2 trunk with a tied LM head (Hugging Face GPT2LMHeadModel).

Same widths, depth, heads, positions, dropout and attention scaling (1/(layer+1)) as the Backpack it is compared with,
so `--arch transformer` isolates what the sense decomposition adds.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel

from .config import BackpackConfig, check_fits_in_memory
from .modeling_backpack import BackpackForCausalLM

ARCHITECTURES = ("backpack", "transformer")

TRUNK_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "activation_function", "resid_pdrop", "embd_pdrop",
    "attn_pdrop", "layer_norm_epsilon", "initializer_range", "scale_attn_by_inverse_layer_idx", "bos_token_id",
    "eos_token_id", "pad_token_id",
)


def transformer_config(config: BackpackConfig) -> GPT2Config:
    """GPT-2 config with the Backpack's trunk settings and a tied output layer."""
    return GPT2Config(**{name: getattr(config, name) for name in TRUNK_FIELDS}, tie_word_embeddings=True)


def build_model(config: BackpackConfig, arch: str = "backpack"):
    """A freshly initialized model of either architecture from one Backpack config."""
    check_fits_in_memory(config, arch)
    if arch == "backpack":
        return BackpackForCausalLM(config)
    return GPT2LMHeadModel(transformer_config(config))
