"""Similarity between words in sense space, and a word's nearest neighbours there.

Per sense l: cos(C_l(a), C_l(b)); overall: the cosine of all k senses concatenated (Hewitt et al. 2023, Sec. 5.1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from .projection import check_sense_index, word_senses


@dataclass
class SenseSimilarity:
    word_a: str
    word_b: str
    per_sense: list[float]  # [k] cos(C_l(a), C_l(b))
    overall: float  # cos of the concatenated senses
    embedding: float  # cos of the (averaged) embedding rows

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sense_similarity(model, tokenizer, word_a: str, word_b: str, how: str = "average") -> SenseSimilarity:
    ids_a, a = word_senses(model, tokenizer, word_a, how)
    ids_b, b = word_senses(model, tokenizer, word_b, how)
    E = model.get_input_embeddings().weight
    rows = lambda ids: E[ids[:1] if how == "first" else ids].mean(0)
    return SenseSimilarity(word_a, word_b, [round(float(v), 4) for v in F.cosine_similarity(a, b, dim=-1)],
                           round(float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0)), 4),
                           round(float(F.cosine_similarity(rows(ids_a), rows(ids_b), dim=0)), 4))


@dataclass
class Neighbours:
    word: str
    sense: int | None  # None: all senses concatenated
    neighbours: list[tuple[str, float]]  # (token, cosine), most similar first

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def nearest_neighbours(model, tokenizer, word: str, n: int = 10, sense: int | None = None, how: str = "average",
                       chunk: int = 4096) -> Neighbours:
    """The n vocabulary tokens whose sense `sense` (or whose concatenated senses) are closest in cosine to the
    word's, the word's own tokens and special tokens excluded. Senses of the vocabulary are computed in chunks."""
    check_sense_index(model, sense)
    ids, target = word_senses(model, tokenizer, word, how)
    target = target[sense] if sense is not None else target.flatten()  # [d] or [k*d]
    vocab = min(len(tokenizer), model.config.vocab_size)
    scores = torch.empty(vocab)
    for start in range(0, vocab, chunk):
        index = torch.arange(start, min(start + chunk, vocab), device=model.device)
        senses = model.token_senses(index)  # [chunk, k, d]
        rows = senses[:, sense] if sense is not None else senses.flatten(1)
        scores[start:start + len(index)] = F.cosine_similarity(rows, target.unsqueeze(0), dim=-1).float().cpu()
    excluded = [i for i in set(ids) | set(tokenizer.all_special_ids) if i < vocab]
    scores[excluded] = float("-inf")
    top = scores.topk(min(n, vocab - len(excluded)))  # never an excluded token
    return Neighbours(word, sense, [(tokenizer.decode([i]), round(v, 4))
                                    for i, v in zip(top.indices.tolist(), top.values.tolist())])
