"""Text generation through Hugging Face `generate()` with the model's KV cache."""

from __future__ import annotations

import sys

import torch

from .checks import check
from .data.tokenizers import encode_strict
from .errors import BackpackError
from .model.loading import max_positions, require_causal_lm


def encode_prompt(tokenizer, prompt: str, vocab_size: int) -> list[int]:
    """Token ids of the prompt (an empty prompt starts from end-of-text); unknown characters or ids past the model's
    vocabulary are an error."""
    if not prompt and tokenizer.eos_token_id is None:
        raise BackpackError("an empty prompt starts from the end-of-text token, and this tokenizer names none; "
                            "give a prompt")
    ids = encode_strict(tokenizer, prompt) if prompt else [tokenizer.eos_token_id]
    if ids and max(ids) >= vocab_size:
        raise BackpackError(f"prompt token id {max(ids)} is out of range for the model's vocabulary of {vocab_size}")
    return ids


@torch.no_grad()
def sample_text(model, tokenizer, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1, greedy: bool = False,
                **model_kwargs) -> list[str]:
    """`num_samples` continuations of `prompt` (prompt included), reproducible for a seed."""
    check("max_new_tokens", max_new_tokens, "positive_int")
    check("num_samples", num_samples, "positive_int")
    check("seed", seed, "non_negative_int")
    if greedy and num_samples > 1:
        raise BackpackError(f"greedy decoding gives a single continuation; ask for 1 sample, not {num_samples}")
    if not greedy:
        check("temperature", temperature, "positive_float")
        check("top_k", top_k, "non_negative_int")
        check("top_p", top_p, "probability")
    if tokenizer is None:
        raise BackpackError("the model directory has no tokenizer; pass one saved with the model")
    require_causal_lm(model, "sampling")
    ids = encode_prompt(tokenizer, prompt, model.config.vocab_size)
    positions = max_positions(model)  # None: unbounded
    room = positions - len(ids) if positions else max_new_tokens
    if room <= 0:
        raise BackpackError(f"the prompt has {len(ids)} tokens; the model holds only {positions}")
    if max_new_tokens > room:
        print(f"note: generating {room} tokens, the room left in the model's {positions} positions", file=sys.stderr)
        max_new_tokens = room
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    torch.manual_seed(seed)
    sampling = {} if greedy else dict(temperature=temperature, top_k=top_k or None, top_p=top_p)
    out = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens, do_sample=not greedy,
        num_return_sequences=num_samples, pad_token_id=tokenizer.eos_token_id, eos_token_id=None, **sampling,
        **model_kwargs,
    )
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out]
