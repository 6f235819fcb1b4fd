"""Tiny random models of every architecture the head analyses support, built locally (no hub)."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
    MistralForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM,
)

from backpacklm import BackpackConfig, BackpackForCausalLM
from backpacklm.model.transformer import build_model

ARCHS = ["gpt2", "transformer", "backpack", "opt", "llama", "mistral", "qwen2", "gpt_neox"]
VOCAB, D, LAYERS, HEADS, KV_HEADS = 64, 32, 2, 4, 2


def tiny_config(name: str):
    llama_like = dict(hidden_size=D, intermediate_size=2 * D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV_HEADS, vocab_size=VOCAB, max_position_embeddings=64)
    return {
        "gpt2": lambda: GPT2Config(n_layer=LAYERS, n_head=HEADS, n_embd=D, vocab_size=VOCAB, n_positions=64,
                                    bos_token_id=0, eos_token_id=0),
        "transformer": lambda: BackpackConfig.from_preset("tiny", vocab_size=VOCAB, n_layer=LAYERS, n_head=HEADS,
                                                          n_embd=D, n_positions=64),
        "backpack": lambda: BackpackConfig.from_preset("tiny", vocab_size=VOCAB, n_layer=LAYERS, n_head=HEADS,
                                                       n_embd=D, n_positions=64),
        "opt": lambda: OPTConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=2 * D,
                                 vocab_size=VOCAB, max_position_embeddings=64, word_embed_proj_dim=D),
        "llama": lambda: LlamaConfig(**llama_like),
        "mistral": lambda: MistralConfig(**llama_like, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**llama_like),
        "gpt_neox": lambda: GPTNeoXConfig(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                          intermediate_size=2 * D, vocab_size=VOCAB, max_position_embeddings=64),
    }[name]()


MODEL_CLASSES = {"gpt2": GPT2LMHeadModel, "opt": OPTForCausalLM, "llama": LlamaForCausalLM,
                 "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM, "gpt_neox": GPTNeoXForCausalLM,
                 "backpack": BackpackForCausalLM}


def tiny_model(name: str, attn: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(name)
    model = build_model(config, "transformer") if name == "transformer" else MODEL_CLASSES[name](config)
    model.set_attn_implementation(attn)
    return model.eval()
