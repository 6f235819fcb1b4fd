"""Tiny random models saved to folders with one shared BPE tokenizer, for the topic-control and PPLM tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from backpacklm.data.tokenizers import train_bpe_tokenizer
from backpacklm.model.config import BackpackConfig
from backpacklm.model.modeling_backpack import BackpackForCausalLM
from tests.helpers import write_corpus

TOPIC_WORDS = ["king", "queen", "crown", "knight", "sword", "lord"]


def tiny_tokenizer(tmp: Path):
    text = write_corpus(tmp / "corpus.txt", sentences=400).read_text()
    return train_bpe_tokenizer([text], vocab_size=320)


def tiny_backpack(vocab_size: int, seed: int = 0) -> BackpackForCausalLM:
    torch.manual_seed(seed)
    config = BackpackConfig.from_preset("tiny", vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, num_senses=4,
                                        n_positions=64, eos_token_id=0, bos_token_id=0)
    return BackpackForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0,
                        eos_token_id=0, initializer_range=0.2)  # wide weights: logits that react to the cache
    return GPT2LMHeadModel(config).eval()


def save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_topic(path: Path, words=TOPIC_WORDS) -> Path:
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path
