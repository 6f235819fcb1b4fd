"""Knowledge editing by sense replacement (Hewitt et al. 2023, Sec. 6.3): make a word w predict b where it
predicted a, by moving each of w's senses off the direction of a's embedding and onto b's.

    t_l  = c_l . e_a / |e_a|^2
    c'_l = c_l - t_l e_a + t_l (|e_a|^2 / |e_b|^2) e_b          for every sense c_l of w; e_a = E[a], e_b = E[b]

The edited senses are a `sense_overrides` table {token id of w: [k, d]} passed to the forward, so the edit holds
wherever w occurs, in a plain forward and in cached generation alike. a and b are read as their first token (with a
leading space where the tokenizer is space-aware); every token of w is edited, and w's bare form when it is one
token (w opening a text).

Edits live in a small JSON file, by default `edits.json` in the model directory:
    {"edits": [{"word": "MacBook", "from": "Apple", "to": "HP"}, ...]}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..atomic import check_output_file, is_json_object_with, write_json_atomic
from ..errors import BackpackError
from .projection import require_backpack
from .words import word_ids

EDITS_FILE = "edits.json"


@dataclass(frozen=True)
class SenseEdit:
    word: str  # w
    source: str  # a: what w's senses predicted
    target: str  # b: what they should predict instead

    def to_dict(self) -> dict:
        return {"word": self.word, "from": self.source, "to": self.target}


def replace_sense_direction(senses: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
    """senses [k, d] -> edited senses [k, d] (the formula in the module docstring)."""
    t = senses @ e_a / e_a.dot(e_a)  # [k]
    scale = e_a.dot(e_a) / e_b.dot(e_b)
    return senses - t.unsqueeze(1) * e_a + (t * scale).unsqueeze(1) * e_b


def word_forms(tokenizer, word: str, vocab_size: int) -> list[list[int]]:
    """Token ids of w as the edit sees it: mid-text (" w", `word_ids`) and, when that differs and is one token, at
    the start of a text ("w"), so a prompt that opens with w is edited too."""
    forms = [word_ids(tokenizer, word, vocab_size=vocab_size)]
    try:
        bare = word_ids(tokenizer, word, leading_space=False, vocab_size=vocab_size)
    except BackpackError:  # e.g. a word-level vocabulary without the bare form
        return forms
    return forms + [bare] if len(bare) == 1 and bare != forms[0] else forms


def first_id(tokenizer, word: str, vocab_size: int) -> int:
    return word_ids(tokenizer, word, vocab_size=vocab_size)[0]


@torch.no_grad()
def edit_overrides(model, tokenizer, edits: list[SenseEdit]) -> dict[int, torch.Tensor]:
    """{token id: edited senses [k, d]} for every distinct token of every edited word's forms (`word_forms`; a
    token the word repeats is edited once); edits of one word compose in order."""
    require_backpack(model)
    V = model.config.vocab_size
    E = model.get_input_embeddings().weight
    overrides: dict[int, torch.Tensor] = {}
    for edit in edits:
        source, target = first_id(tokenizer, edit.source, V), first_id(tokenizer, edit.target, V)
        if source == target:
            raise BackpackError(f"edit of {edit.word!r}: {edit.source!r} and {edit.target!r} are the same token "
                                f"({tokenizer.decode([source])!r}), so the edit would change nothing")
        e_a, e_b = E[source], E[target]
        tokens = [token for form in word_forms(tokenizer, edit.word, V) for token in form]
        for token in dict.fromkeys(tokens):  # once per distinct token
            senses = overrides.get(token)
            if senses is None:
                senses = model.token_senses(torch.tensor([token], device=model.device))[0]
            overrides[token] = replace_sense_direction(senses, e_a, e_b)
    return overrides


def edits_path(path: str | Path) -> Path:
    """Where `save_edits(path, ...)` writes, checked first: a folder (a model's) means its edits.json, and an existing
    file is replaced only if it is an edits file."""
    path = Path(path)
    return check_output_file(path / EDITS_FILE if path.is_dir() else path, "an edits file",
                             lambda existing: is_json_object_with(existing, "edits"))


def save_edits(path: str | Path, edits: list[SenseEdit]) -> Path:
    path = edits_path(path)
    write_json_atomic(path, {"edits": [e.to_dict() for e in edits]})
    return path


def _edit_field(item: dict, key: str) -> str:
    value = item[key]
    if not isinstance(value, str):  # str(None) would edit the word "None"
        raise TypeError(f"{key!r} must be a word, not {json.dumps(value)}")
    return value


def load_edits(path: str | Path) -> list[SenseEdit]:
    """Edits from a JSON file (or a model directory holding edits.json); a malformed file is a one-line error."""
    path = Path(path)
    if path.is_dir():
        path = path / EDITS_FILE
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))["edits"]
        edits = [SenseEdit(*(_edit_field(e, key) for key in ("word", "from", "to"))) for e in items]
    except OSError as err:
        raise BackpackError(f"{path}: cannot read edits ({err.strerror})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise BackpackError(f"{path}: not an edits file ({{\"edits\": [{{\"word\", \"from\", \"to\"}}]}}): {err}") from None
    if not edits:
        raise BackpackError(f"{path}: no edits in the file")
    return edits


@dataclass
class PromptEffect:
    prompt: str
    p_source_before: float  # p(a) at the next token
    p_target_before: float  # p(b)
    p_source_after: float
    p_target_after: float


@dataclass
class EditReport:
    edit: dict
    prompts: list[PromptEffect]
    moved: int  # prompts where p(b) > p(a) after the edit
    perplexity_before: float | None  # on unrelated text
    perplexity_after: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def next_token_probs(model, tokenizer, prompt: str, ids: list[int], overrides=None) -> list[float]:
    """p(token) at the position after `prompt` for each of `ids`."""
    from ..sampling import encode_prompt

    prompt_ids = torch.tensor([encode_prompt(tokenizer, prompt, model.config.vocab_size)], device=model.device)
    probs = model(prompt_ids, sense_overrides=overrides, use_cache=False).logits[0, -1].float().softmax(-1)
    return [float(probs[i]) for i in ids]


@torch.no_grad()
def text_perplexity(model, token_ids: list[int], block_size: int, overrides=None) -> float:
    """exp(mean next-token loss) over consecutive windows of `token_ids`."""
    total, count = 0.0, 0
    for start in range(0, max(len(token_ids) - 1, 1), block_size):
        window = torch.tensor([token_ids[start:start + block_size + 1]], device=model.device)
        if window.shape[1] < 2:
            break
        n = window.shape[1] - 1
        total += float(model(window, labels=window, sense_overrides=overrides, use_cache=False).loss) * n
        count += n
    if not count:
        raise BackpackError("the unrelated text has fewer than 2 tokens")
    return math.exp(total / count)


def _contains(ids: list[int], run: list[int]) -> bool:
    return any(ids[i:i + len(run)] == run for i in range(len(ids) - len(run) + 1))


def measure_edit(model, tokenizer, edit: SenseEdit, prompts: list[str], unrelated: str | None = None) -> EditReport:
    """p(a) and p(b) after each prompt (which should mention w) before and after the edit, and the perplexity of
    unrelated text before and after."""
    from ..sampling import encode_prompt

    if not prompts:
        raise BackpackError("no prompts to measure the edit on")
    V = model.config.vocab_size
    ids = [first_id(tokenizer, edit.source, V), first_id(tokenizer, edit.target, V)]
    overrides = edit_overrides(model, tokenizer, [edit])
    forms = word_forms(tokenizer, edit.word, V)
    effects = []
    for prompt in prompts:
        if not any(_contains(encode_prompt(tokenizer, prompt, V), form) for form in forms):
            raise BackpackError(f"prompt {prompt!r} does not mention {edit.word!r}, so the edit cannot show there")
        before = next_token_probs(model, tokenizer, prompt, ids)
        after = next_token_probs(model, tokenizer, prompt, ids, overrides)
        effects.append(PromptEffect(prompt, *(round(p, 6) for p in before + after)))
    ppl = (None, None)
    if unrelated:
        tokens = encode_prompt(tokenizer, unrelated, V)
        block = min(model.config.n_positions - 1, 256)
        ppl = tuple(round(text_perplexity(model, tokens, block, o), 4) for o in (None, overrides))
    moved = sum(e.p_target_after > e.p_source_after for e in effects)
    return EditReport(edit.to_dict(), effects, moved, *ppl)
