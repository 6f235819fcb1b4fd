"""How well a steered generation hits its topic, and what it costs in fluency.

    success        share of generations the scorer judges on-topic (default: at least one topic word)
    in-vocab share share of generated tokens whose id is a topic target id
    perplexity     exp(mean NLL of the generated tokens given the prompt) under a reference model
    MAUVE          Pillutla et al. 2021 (`mauve-text`), on features we compute: a model's last hidden state, mean over
                   tokens (or the last token), of generations (q) against reference texts (p)
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import BackpackError
from ..model.loading import max_positions

Scorer = Callable[[str], bool]
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def topic_word_scorer(words: Sequence[str]) -> Scorer:
    """On-topic when the text holds at least one of `words` as a whole word (case-insensitive); an entry of several
    words ("baking dish", as in PPLM's lists) counts when they occur in a row."""
    phrases = {tuple(WORD.findall(w.lower())) for w in words} - {()}

    def judge(text: str) -> bool:
        found = WORD.findall(text.lower())
        return any(tuple(found[i:i + len(p)]) == p for p in phrases for i in range(len(found) - len(p) + 1))

    return judge


def semantic_success(texts: Sequence[str], scorer: Scorer) -> float:
    """Share of texts the scorer accepts, in [0, 1]."""
    if not texts:
        raise BackpackError("no generations to score")
    return sum(bool(scorer(t)) for t in texts) / len(texts)


def in_vocab_share(new_ids: Sequence[Sequence[int]], target_ids: Sequence[int]) -> float:
    """Generated tokens whose id is a target id / all generated tokens."""
    targets = set(target_ids)
    total = sum(len(row) for row in new_ids)
    if total == 0:
        raise BackpackError("no generated tokens to score")
    return sum(i in targets for row in new_ids for i in row) / total


@torch.no_grad()
def continuation_nll(model, prompt_ids: Sequence[int], new_ids: Sequence[Sequence[int]]) -> tuple[float, int]:
    """(summed NLL in nats, token count) of each continuation given the prompt, under `model`."""
    device = next(model.parameters()).device
    if len({len(row) for row in new_ids}) != 1:
        raise BackpackError("continuations of one prompt must have equal lengths")
    ids = torch.tensor([list(prompt_ids) + list(row) for row in new_ids], device=device)
    if ids.shape[1] <= len(prompt_ids):
        return 0.0, 0
    logits = model(input_ids=ids, use_cache=False).logits[:, len(prompt_ids) - 1 : -1].float()  # [b, n, V]
    targets = ids[:, len(prompt_ids):]
    return float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")), targets.numel()


def perplexity_of_generations(model, generations) -> float:
    """exp(total NLL / total tokens) of the generated tokens over `Generation`s, under `model` (same tokenizer)."""
    total, count = 0.0, 0
    for g in generations:
        nll, n = continuation_nll(model, g.prompt_ids, g.new_ids)
        total, count = total + nll, count + n
    if count == 0:
        raise BackpackError("no generated tokens to score")
    return math.exp(total / count)


@torch.no_grad()
def text_features(model, tokenizer, texts: Sequence[str], pooling: str = "mean", max_tokens: int | None = None,
                  batch_size: int = 16) -> np.ndarray:
    """[n, d] features of texts: the model's final hidden state, mean over tokens ("mean") or the last token ("last")."""
    if pooling not in ("mean", "last"):
        raise BackpackError(f"pooling must be 'mean' or 'last', not {pooling!r}")
    limit = max_tokens or max_positions(model) or 1024
    device = next(model.parameters()).device
    encoded = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)[:limit]
        if not ids:
            raise BackpackError("cannot compute features of an empty text")
        encoded.append(ids)
    rows = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in chunk], device=device)
        keep = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk], device=device)
        hidden = _last_hidden(model, ids, keep).float()  # [b, t, d]
        if pooling == "mean":
            rows.append((hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))
        else:
            rows.append(hidden[torch.arange(len(chunk)), keep.sum(1) - 1])
    return torch.cat(rows).cpu().numpy()


def _last_hidden(model, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[b, t, d]: a Backpack's contextualization trunk output, or any HF model's last hidden state."""
    if getattr(model.config, "model_type", None) == "backpack":
        return model.transformer(input_ids=ids, attention_mask=keep).last_hidden_state
    return model(input_ids=ids, attention_mask=keep, output_hidden_states=True, use_cache=False).hidden_states[-1]


def mauve_score(reference_features: np.ndarray, generated_features: np.ndarray, seed: int = 25, **options) -> float:
    """MAUVE of generations (q) against references (p) from precomputed features [n, d] (no model download)."""
    if len(reference_features) < 2 or len(generated_features) < 2:
        raise BackpackError("MAUVE needs at least 2 reference texts and 2 generations")
    import mauve

    result = mauve.compute_mauve(p_features=np.asarray(reference_features, dtype=np.float32),
                                 q_features=np.asarray(generated_features, dtype=np.float32),
                                 seed=seed, verbose=False, **options)
    return float(result.mauve)
