"""Topic control by sense re-weighting (Hewitt et al. 2023, Sec. 6 and App. "Topic control").

A topic is a bag of words; its targets T are the first token ids of the words (with a leading space where the
tokenizer is space-aware). Every (token v, sense l) gets a score and, from the score's quantile, a weight:

    score[v, l] = sum_{w in T} (C_l(v) E^T)[w] / max_u (C_l(v) E^T)[u]                    [V, k]
    delta[v, l] = w0 above the 0.95 quantile of all scores, w1 in (0.80, 0.95], w2 in (0.60, 0.80], else 1
    strengths (w0, w1, w2, rest): 0 = (1, 1, 1, 1), 1 = (1.5, 1.5, 1.3, 1), 2 = (2.2, 2.2, 1.5, 1), 3 = (3.3, 3.3, 3, 1)

During generation the re-weighting is annealed so a sense whose words already appear is not pushed again. For the
current sequence x_0 .. x_{t-1} (prompt and generated tokens) and every position i < t:

    a[i, l]      = sum_{j < t} relu(C_l(x_i) . E[x_j])                                      (grows as tokens arrive)
    f            = max(delta) / 7.5
    s[i, l]      = sigmoid(-f a[i, l] + 6) (1 + i / 100)                                    (i: 0-based position)
    delta'[i, l] = delta[x_i, l] s[i, l] + (1 - s[i, l])

and the next token is predicted with every sense vector C_l(x_i) scaled by delta'[i, l] before the weighted sum.

With the KV cache: the cache holds the *unscaled* sense vectors of past positions and the model multiplies them by
`sense_multipliers` [batch, key_pos, k] at every step, so passing delta' for all positions is exact. a is kept
incrementally: a new token x_t adds relu(C_l(x_i) . E[x_t]) to every earlier row and brings its own row
sum_{j <= t} relu(C_l(x_t) . E[x_j]); cost O(t k d) per step, no prefix recomputation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ..errors import BackpackError
from .projection import require_backpack
from .words import word_ids

STRENGTHS: dict[int, tuple[float, float, float, float]] = {
    0: (1.0, 1.0, 1.0, 1.0),
    1: (1.5, 1.5, 1.3, 1.0),
    2: (2.2, 2.2, 1.5, 1.0),
    3: (3.3, 3.3, 3.0, 1.0),
}
QUANTILES = (0.95, 0.80, 0.60)  # bin edges: (q95, inf) -> w0, (q80, q95] -> w1, (q60, q80] -> w2, else -> 1
ANNEAL_DIVISOR = 7.5  # f = max(delta) / 7.5


# --- topics ------------------------------------------------------------------------------------------------------
@dataclass
class Topic:
    """A bag of words and its target token ids (first token of each word, deduplicated, sorted)."""

    name: str
    words: list[str]
    target_ids: list[int]
    skipped: list[str] = field(default_factory=list)  # words the tokenizer cannot encode

    def to_dict(self) -> dict:
        return {"name": self.name, "words": len(self.words), "target_ids": len(self.target_ids), "skipped": self.skipped}


def read_topic_words(path: str | Path) -> list[str]:
    """Words of a topic file: one per line, blank lines and repeats dropped. No words -> BackpackError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte order mark is dropped
    except FileNotFoundError:
        raise BackpackError(f"topic file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BackpackError(f"cannot read topic file {path}: {err}") from None
    words = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not words:
        raise BackpackError(f"topic file {path} has no words (expected one word per line)")
    return words


def make_topic(tokenizer, words: list[str], vocab_size: int, name: str = "topic") -> Topic:
    """Targets = first token id of each word with a leading space; words the tokenizer cannot encode are skipped,
    and a topic with none left is an error."""
    if not words:
        raise BackpackError(f"topic {name!r} has no words")
    targets, skipped = set(), []
    for word in words:
        try:
            targets.add(word_ids(tokenizer, word, leading_space=True, vocab_size=vocab_size)[0])
        except BackpackError:
            skipped.append(word)
    if not targets:
        raise BackpackError(f"no word of topic {name!r} is in the model's vocabulary")
    return Topic(name=name, words=list(words), target_ids=sorted(targets), skipped=skipped)


def load_topic(path: str | Path, tokenizer, vocab_size: int) -> Topic:
    """A topic from a file of words (one per line); its name is the file's stem."""
    return make_topic(tokenizer, read_topic_words(path), vocab_size, name=Path(path).stem)


# --- scores and weights -------------------------------------------------------------------------------------------
@torch.no_grad()
def sense_topic_scores(model, target_ids: list[int], chunk: int = 1024) -> torch.Tensor:
    """score[v, l] = sum_{w in T} (C_l(v) E^T)[w] / max_u (C_l(v) E^T)[u]  ->  [V, k] float32 (Sec. 6)."""
    require_backpack(model, "sense re-weighting")
    embeddings = model.get_input_embeddings().weight  # [V, d]
    targets = torch.tensor(target_ids, device=embeddings.device)
    rows = []
    for start in range(0, embeddings.shape[0], chunk):
        ids = torch.arange(start, min(start + chunk, embeddings.shape[0]), device=embeddings.device)
        logits = model.sense_network(embeddings[ids]) @ embeddings.T  # [chunk, k, V]
        rows.append((logits[..., targets] / logits.max(dim=-1, keepdim=True).values).sum(-1).float())
    return torch.cat(rows)


def topic_weights(scores: torch.Tensor, strength: int | tuple[float, float, float, float]) -> torch.Tensor:
    """delta [V, k]: w0 / w1 / w2 / 1 for scores above the 0.95 / 0.80 / 0.60 quantiles of all V*k scores."""
    weights = STRENGTHS.get(strength) if isinstance(strength, int) else tuple(strength)
    if weights is None or len(weights) != 4:
        raise BackpackError(f"strength must be one of {sorted(STRENGTHS)} or four weights, not {strength!r}")
    q95, q80, q60 = (float(q) for q in torch.quantile(scores.flatten().double().cpu(), torch.tensor(QUANTILES, dtype=torch.double)))
    delta = torch.full_like(scores, weights[3])
    delta[scores > q60] = weights[2]
    delta[scores > q80] = weights[1]
    delta[scores > q95] = weights[0]
    return delta


# --- annealing ----------------------------------------------------------------------------------------------------
def anneal_activation(senses: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
    """a[b, i, l] = sum_j relu(C_l(x_i) . E[x_j]) from scratch; senses [b, t, k, d], token_embeddings [b, t, d]."""
    return torch.einsum("bikd,bjd->bikj", senses, token_embeddings).relu().sum(-1)


def annealed_multipliers(delta_tokens: torch.Tensor, activation: torch.Tensor, delta_max: float) -> torch.Tensor:
    """delta'[b, i, l] = delta[x_i, l] s + (1 - s),  s = sigmoid(-f a + 6)(1 + i/100),  f = max(delta)/7.5.
    delta_tokens, activation: [b, t, k] -> [b, t, k]."""
    position = torch.arange(activation.shape[1], device=activation.device, dtype=activation.dtype).view(1, -1, 1)
    s = torch.sigmoid(-(delta_max / ANNEAL_DIVISOR) * activation + 6) * (1 + position / 100)
    return delta_tokens * s + (1 - s)


# --- generation ---------------------------------------------------------------------------------------------------
@dataclass
class Generation:
    """One batch of continuations of one prompt.
    prompt_ids: [p]; new_ids: [batch][n] generated ids; step_logits: [n, batch, V] pre-sampling logits (on request);
    seconds: wall time of the whole batch."""

    prompt_ids: list[int]
    new_ids: list[list[int]]
    seconds: float
    step_logits: torch.Tensor | None = None


def sampling_processors(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> LogitsProcessorList:
    """Hugging Face logits warpers for temperature, top-k and nucleus sampling."""
    if temperature <= 0:
        raise BackpackError(f"temperature must be positive, not {temperature}")
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def next_tokens(logits: torch.Tensor, tokens: torch.Tensor, processors: LogitsProcessorList, greedy: bool,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits [b, V] -> ids [b, 1]: argmax, or a sample after the warpers."""
    if greedy:
        return logits.argmax(-1, keepdim=True)
    probs = F.softmax(processors(tokens, logits.float()), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_with_topic(model, prompt_ids: list[int], delta: torch.Tensor | None, max_new_tokens: int,
                        num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        greedy: bool = False, seed: int = 0, use_cache: bool = True,
                        keep_logits: bool = False) -> Generation:
    """Continue `prompt_ids` `num_samples` times with every sense scaled by the annealed delta' (module docstring).

    delta: [V, k] from `topic_weights` (None = no intervention). use_cache=False recomputes the whole sequence at
    every step (the reference the cached path must match)."""
    require_backpack(model, "sense re-weighting")
    if not prompt_ids:
        raise BackpackError("the prompt has no tokens")
    if len(prompt_ids) + max_new_tokens > model.config.n_positions:
        raise BackpackError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed the model's "
                            f"{model.config.n_positions} positions")
    device = next(model.parameters()).device
    embeddings = model.get_input_embeddings().weight  # [V, d]
    generator = torch.Generator(device=device).manual_seed(seed)
    processors = sampling_processors(temperature, top_k, top_p)
    delta = None if delta is None else delta.to(device=device, dtype=embeddings.dtype)
    delta_max = float(delta.max()) if delta is not None else 1.0

    started = time.perf_counter()
    tokens = torch.tensor([prompt_ids], device=device).expand(num_samples, -1)  # [b, t]
    senses = model.token_senses(tokens)  # [b, t, k, d]
    activation = anneal_activation(senses, embeddings[tokens])  # [b, t, k]
    cache = DynamicCache() if use_cache else None
    step_input, logits_seen = tokens, []
    for _ in range(max_new_tokens):
        multipliers = None
        if delta is not None:
            if not use_cache:  # the reference: a from scratch over the whole sequence
                activation = anneal_activation(model.token_senses(tokens), embeddings[tokens])
            multipliers = annealed_multipliers(delta[tokens], activation, delta_max)  # [b, t, k]
        out = model(step_input if use_cache else tokens, cache=cache, use_cache=use_cache,
                    sense_multipliers=multipliers, logits_to_keep=1)
        logits = out.logits[:, -1]  # [b, V]
        if keep_logits:
            logits_seen.append(logits.float().cpu())
        new = next_tokens(logits, tokens, processors, greedy, generator)  # [b, 1]
        if delta is not None and use_cache:  # grow a by the new token's column and row
            new_senses = model.token_senses(new)  # [b, 1, k, d]
            new_embedding = embeddings[new]  # [b, 1, d]
            activation = activation + torch.einsum("bikd,bd->bik", senses, new_embedding[:, 0]).relu()
            senses = torch.cat([senses, new_senses], dim=1)
            tokens = torch.cat([tokens, new], dim=1)
            new_row = anneal_activation(new_senses, embeddings[tokens])  # [b, 1, k]
            activation = torch.cat([activation, new_row], dim=1)
        else:
            tokens = torch.cat([tokens, new], dim=1)
        step_input = new
    new_ids = tokens[:, len(prompt_ids):].tolist()
    return Generation(prompt_ids=list(prompt_ids), new_ids=new_ids, seconds=time.perf_counter() - started,
                      step_logits=torch.stack(logits_seen) if keep_logits else None)
