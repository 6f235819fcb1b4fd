"""Sense projection: what each sense of a token does to the output distribution (Hewitt et al. 2023, Sec. 4).

Sense l of token x adds C_l(x) to the output; its effect on the logits is the vector C_l(x) E^T [vocab], so the
tokens it raises most and lowers most say what the sense means.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import BackpackError
from .words import word_ids


@dataclass
class SenseProjection:
    """For one token: per sense, the top-n (token, logit) raised and lowered."""

    word: str
    token_id: int
    raised: list[list[tuple[str, float]]]  # [sense][rank] -> (token, logit contribution)
    lowered: list[list[tuple[str, float]]]

    def to_dict(self) -> dict:
        return asdict(self)


def _require_backpack(model) -> None:
    if getattr(model.config, "model_type", None) != "backpack":
        raise BackpackError(f"sense analysis needs a Backpack model, not {model.config.model_type!r}")


@torch.no_grad()
def sense_projection(model, tokenizer, word: str, top: int = 10) -> SenseProjection:
    """Per sense l of the word's (first) token x: top tokens of C_l(x) E^T, highest and lowest."""
    _require_backpack(model)
    ids = word_ids(tokenizer, word)
    token_id = ids[0]
    if token_id >= model.config.vocab_size:
        raise BackpackError(f"token id {token_id} of {word!r} is outside the model's vocabulary")
    senses = model.token_senses(torch.tensor([token_id], device=model.device))[0]  # [k, d]
    logits = senses @ model.get_input_embeddings().weight.T  # [k, V]
    logits = logits[:, : len(tokenizer)]  # rows past the tokenizer are padding
    show = lambda i: tokenizer.decode([i])
    raised, lowered = [], []
    for row in logits:
        hi, lo = row.topk(top), (-row).topk(top)
        raised.append([(show(i), round(v, 4)) for i, v in zip(hi.indices.tolist(), hi.values.tolist())])
        lowered.append([(show(i), round(-v, 4)) for i, v in zip(lo.indices.tolist(), lo.values.tolist())])
    return SenseProjection(word=word, token_id=token_id, raised=raised, lowered=lowered)


def visible(token: str) -> str:
    """A token printable on one line: spaces as the open-box sign, newlines and tabs escaped."""
    return token.replace(" ", "\u2423").replace("\n", "\\n").replace("\t", "\\t") or "''"


def format_projection(projection: SenseProjection, top: int = 6) -> str:
    """Plain-text table: one line per sense with the tokens it raises and lowers."""
    lines = [f"senses of {projection.word!r} (token {projection.token_id}):"]
    for l, (up, down) in enumerate(zip(projection.raised, projection.lowered)):
        fmt = lambda pairs: " ".join(visible(t) for t, _ in pairs[:top])
        lines.append(f"  sense {l:2d}  + {fmt(up):<48}  - {fmt(down)}")
    return "\n".join(lines)
