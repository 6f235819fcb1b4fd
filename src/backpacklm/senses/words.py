"""Words to token ids, and per-word vectors from per-token rows.

A word is looked up GPT-2 style, with a leading space (" doctor"), when the tokenizer is space-aware: it attaches
the space to the word's first token instead of emitting a lone space token. Char-level tokenizers are not, so there
the word is encoded as written. A word of several tokens is summarized by the mean of its tokens' rows ("average",
the default) or by its first token's row ("first").
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..data.tokenizers import encode_strict, is_char_tokenizer
from ..errors import BackpackError

HOW = ("average", "first")


def _spaced_ids(tokenizer, word: str) -> list[int] | None:
    """Ids of " word" when the tokenizer attaches the space to the first token (GPT-2 style), else None."""
    if is_char_tokenizer(tokenizer):
        return None
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    first = tokenizer.decode(ids[:1]) if ids else ""
    return ids if first.startswith(" ") and first.strip() and tokenizer.decode(ids) == " " + word else None


def word_ids(tokenizer, word: str, leading_space: bool = True, vocab_size: int | None = None) -> list[int]:
    """Token ids of `word`, with a leading space where the tokenizer is space-aware (and `leading_space`).

    BackpackError for an empty word, a character the tokenizer lacks, an unknown-token id, or an id at or past
    `vocab_size` (the model's rows), so a word outside the vocabulary never silently maps to something else.
    """
    if not word:  # a lone space is a word here: a char-level model's " " token has senses too
        raise BackpackError("empty word")
    ids = _spaced_ids(tokenizer, word) if leading_space else None
    if ids is None:
        try:
            ids = encode_strict(tokenizer, word)
        except BackpackError as err:
            raise BackpackError(f"word {word!r} is not in the vocabulary ({err})") from None
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids):
        raise BackpackError(f"word {word!r} is not in the vocabulary")
    if vocab_size is not None and max(ids) >= vocab_size:
        raise BackpackError(f"word {word!r} has token id {max(ids)}, outside the model's vocabulary of {vocab_size}")
    return ids


def single_token_id(tokenizer, word: str, leading_space: bool = True, vocab_size: int | None = None) -> int | None:
    """The word's id if it is exactly one token, else None (errors as `word_ids`)."""
    ids = word_ids(tokenizer, word, leading_space, vocab_size)
    return ids[0] if len(ids) == 1 else None


def word_vectors(rows: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], ids: Sequence[int],
                 how: str = "average") -> torch.Tensor:
    """One word's vector from its tokens' rows: rows [V, ...] indexed by ids (or a function ids [n] -> [n, ...]),
    then the mean over the n tokens ("average") or the first token's row ("first"). Returns [...]."""
    if how not in HOW:
        raise BackpackError(f"multi-token words: choose 'average' or 'first', not {how!r}")
    ids = list(ids)[:1] if how == "first" else list(ids)
    index = torch.tensor(ids, dtype=torch.long)
    if callable(rows):
        picked = rows(index)
    else:
        picked = rows[index.to(rows.device)]
    return picked.mean(dim=0)
