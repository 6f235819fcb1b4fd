"""Sense projection: what each sense of a word does to the output distribution (Hewitt et al. 2023, Sec. 4).

Sense l of token x adds C_l(x) to the output; its effect on the logits is the vector C_l(x) E^T [vocab], so the
tokens it raises most and lowers most say what the sense means. A word of several tokens uses the mean of its
tokens' sense vectors ("average") or its first token's ("first").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checks import check
from ..errors import BackpackError
from .words import word_ids, word_vectors


@dataclass
class SenseProjection:
    """For one word: per sense, the top-n (token, logit) raised and lowered."""

    word: str
    token_id: int  # first token of the word
    token_ids: list[int]
    how: str  # "average" or "first" over the word's tokens
    raised: list[list[tuple[str, float]]]  # [sense][rank] -> (token, logit contribution)
    lowered: list[list[tuple[str, float]]]

    def to_dict(self) -> dict:
        return asdict(self)

    def top_tokens(self, n: int = 10) -> list[set[str]]:
        """Per sense, the n most raised tokens, stripped of surrounding spaces."""
        return [{token.strip() for token, _ in sense[:n]} for sense in self.raised]


def require_backpack(model, what: str = "sense analysis") -> None:
    """BackpackError unless `model` is a Backpack (`what` names the method that needs one)."""
    if getattr(model.config, "model_type", None) != "backpack":
        raise BackpackError(f"{what} needs a Backpack model, not {model.config.model_type!r}")


def check_sense_index(model, sense: int | None) -> None:
    """BackpackError unless `sense` is None or one of the Backpack's sense indices 0..k-1."""
    k = model.config.num_senses
    if sense is not None and not 0 <= sense < k:
        raise BackpackError(f"sense index {sense} is out of range: the model has senses 0..{k - 1}")


@torch.no_grad()
def word_senses(model, tokenizer, word: str, how: str = "average") -> tuple[list[int], torch.Tensor]:
    """(token ids, sense vectors [k, d]) of a word; multi-token words by `how`."""
    require_backpack(model)
    ids = word_ids(tokenizer, word, vocab_size=model.config.vocab_size)
    return ids, word_vectors(lambda index: model.token_senses(index.to(model.device)), ids, how)


@torch.no_grad()
def sense_projection(model, tokenizer, word: str, top: int = 10, how: str = "average") -> SenseProjection:
    """Per sense l of the word: top tokens of C_l(x) E^T, highest and lowest."""
    ids, senses = word_senses(model, tokenizer, word, how)
    logits = senses @ model.get_input_embeddings().weight.T  # [k, V]
    logits = logits[:, : len(tokenizer)]  # rows past the tokenizer are padding
    show = lambda i: tokenizer.decode([i])
    raised, lowered = [], []
    top = min(check("top", top, "positive_int"), logits.shape[1])  # at most every token
    for row in logits:
        hi, lo = row.topk(top), (-row).topk(top)
        raised.append([(show(i), round(v, 4)) for i, v in zip(hi.indices.tolist(), hi.values.tolist())])
        lowered.append([(show(i), round(-v, 4)) for i, v in zip(lo.indices.tolist(), lo.values.tolist())])
    return SenseProjection(word=word, token_id=ids[0], token_ids=ids, how=how, raised=raised, lowered=lowered)


def sense_projections(model, tokenizer, words: list[str], top: int = 10, how: str = "average") -> list[SenseProjection]:
    """`sense_projection` of each word of a list."""
    if not words:
        raise BackpackError("no words given")
    return [sense_projection(model, tokenizer, word, top, how) for word in words]


def visible(token: str) -> str:
    """A token printable on one line: spaces as the open-box sign, every other non-printable character
    (str.isprintable) escaped as in a Python literal (\\n, \\t, \\x0b, ...)."""
    escape = lambda c: "\u2423" if c == " " else c if c.isprintable() else c.encode("unicode_escape").decode()
    return "".join(map(escape, token)) or "''"


def format_projection(projection: SenseProjection, top: int = 6) -> str:
    """Plain-text table: one line per sense with the tokens it raises and lowers."""
    ids = ",".join(map(str, projection.token_ids))
    lines = [f"senses of {projection.word!r} (token{'s' if len(projection.token_ids) > 1 else ''} {ids}):"]
    for l, (up, down) in enumerate(zip(projection.raised, projection.lowered)):
        fmt = lambda pairs: " ".join(visible(t) for t, _ in pairs[:top])
        lines.append(f"  sense {l:2d}  + {fmt(up):<48}  - {fmt(down)}")
    return "\n".join(lines)


def projection_heatmap(projections: list[SenseProjection], png_path: str | Path, top: int = 3) -> Path:
    """Words x senses heatmap: colour = the sense's largest logit contribution, each cell labelled with the
    sense's top raised tokens."""
    from ..plots import plt, save_figure

    k = len(projections[0].raised)
    values = [[sense[0][1] for sense in p.raised] for p in projections]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * k, 0.8 + 0.55 * len(projections)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for i, p in enumerate(projections):
        for l, sense in enumerate(p.raised):
            label = "\n".join(visible(t) for t, _ in sense[:top])
            ax.text(l, i, label, ha="center", va="center", fontsize=6, color="white")
    ax.set_xticks(range(k), [f"sense {l}" for l in range(k)], fontsize=7)
    ax.set_yticks(range(len(projections)), [p.word for p in projections], fontsize=8)
    fig.colorbar(image, ax=ax, label="top logit raised")
    ax.set_title("sense projections: top raised tokens per sense")
    return save_figure(fig, png_path, dpi=130)
