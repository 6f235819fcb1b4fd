"""Induction heads (Olsson et al. 2022; Bansal et al. 2023, sec. 6): prefix-matching and copying scores per head,
and how much of them survives pruning.

Probe sequences: BOS, then `length` distinct random tokens, the block repeated `repeats` (4) times, for several
lengths and seeded samples. When a frequency ranking of the vocabulary is given (token counts), the most and least
frequent `exclude` fraction of tokens is never drawn; special tokens never are.

prefix matching (head h): for every query position q in repeats 2..R (its token also occurred earlier), the
    attention weight from q to the positions right after that token's earlier occurrences, summed over those
    positions; averaged over queries and sequences. 1 = a perfect induction pattern. Needs attention weights, so the
    model runs with eager attention during the measurement.
copying (head h): at the position k the induction pattern points to (right after the previous occurrence of q's
    token; it holds the token t that comes next), take head h's value vector v_k there, send it through the head's
    output projection W_O^h, the model's final norm (and OPT's project_out, if any) and the unembedding:
    logits = W_U norm(W_O^h v_k). With
    p = softmax(logits) and r = relu(p - mean(p)), the score is r[t] / sum(r): the share of the raised probability
    that goes to the attended token. Averaged over queries and sequences; 1 = the head copies exactly what it reads.
    The value is the one at the ATTENDED position k (the published code took the current position q's value, i.e.
    measured whether the head would copy the token it is looking from). Undefined (None) for the Backpack, whose
    trunk weights senses instead of writing logits, and for a post-LN model with no final norm (OPT-350m).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..atomic import write_json_atomic
from ..errors import BackpackError
from .adapters import adapter_for
from .gates import masking
from .pruning import check_percents, head_prune_mask

DEFAULT_LENGTHS = (10, 16, 25)


def special_ids(tokenizer=None, config=None) -> set[int]:
    ids = set()
    for source in (tokenizer, config):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
    if tokenizer is not None:
        ids.update(i for i in getattr(tokenizer, "all_special_ids", []) if isinstance(i, int))
    return ids


def candidate_tokens(vocab_size: int, token_counts=None, exclude: float = 0.04, skip=()) -> np.ndarray:
    """Token ids the probe may draw: all ids but `skip`, and, given counts [vocab], without the most and least
    frequent `exclude` fraction (by count rank)."""
    if not 0 <= exclude < 0.5:
        raise BackpackError(f"exclude fraction must be in [0, 0.5), got {exclude}")
    ids = np.arange(vocab_size)
    if token_counts is not None:
        counts = np.asarray(token_counts, dtype=np.float64)
        if counts.shape != (vocab_size,):
            counts = np.pad(counts[:vocab_size], (0, max(0, vocab_size - len(counts))))
        order = np.argsort(-counts, kind="stable")  # most frequent first
        cut = int(exclude * vocab_size)
        ids = np.sort(order[cut:vocab_size - cut])
    return ids[~np.isin(ids, list(skip))]


def repeated_sequences(candidates: np.ndarray, length: int, n: int, bos_id: int, repeats: int = 4,
                       seed: int = 0) -> torch.Tensor:
    """[n, 1 + repeats * length]: BOS then `length` distinct tokens drawn from `candidates`, repeated."""
    if length > len(candidates):
        raise BackpackError(f"cannot draw {length} distinct tokens from {len(candidates)} candidates")
    rng = np.random.default_rng([seed, length])
    rows = [np.concatenate([[bos_id], np.tile(rng.choice(candidates, size=length, replace=False), repeats)])
            for _ in range(n)]
    return torch.as_tensor(np.stack(rows), dtype=torch.long)


def induction_targets(length: int, repeats: int = 4) -> torch.Tensor:
    """[pos, pos] 0/1: target[q, k] = 1 if k is right after an earlier occurrence of q's token (BOS at 0)."""
    T = 1 + repeats * length
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    earlier = k - 1  # the occurrence whose successor k is
    same = (earlier >= 1) & (q >= 1) & ((q - earlier) % length == 0) & (earlier < q)
    return same.float()


@dataclass
class InductionScores:
    """prefix_matching and copying: [layer, head] in [0, 1] (copying None where undefined)."""

    prefix_matching: np.ndarray
    copying: np.ndarray | None
    lengths: list[int]
    sequences_per_length: int
    repeats: int
    seed: int
    excluded_fraction: float | None  # None: no frequency ranking was given
    extra: dict = field(default_factory=dict)

    def top_heads(self, n: int = 5, score: str = "prefix_matching") -> list[tuple[int, int, float]]:
        values = np.asarray(getattr(self, score), dtype=np.float64)
        order = np.argsort(-values.ravel(), kind="stable")[:n]
        return [(int(i) // values.shape[1], int(i) % values.shape[1], float(values.ravel()[i])) for i in order]

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["prefix_matching"] = np.asarray(self.prefix_matching).tolist()
        payload["copying"] = None if self.copying is None else np.asarray(self.copying).tolist()
        payload["top_prefix_matching"] = [f"{l}.{h}" for l, h, _ in self.top_heads()]
        return payload

    def save(self, out_dir: str | Path, name: str = "induction") -> dict[str, Path]:
        """<name>.json plus heatmaps <name>_prefix_matching.png and <name>_copying.png."""
        from .plots import head_heatmap

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / f"{name}.json"}
        write_json_atomic(paths["json"], self.to_dict())
        paths["prefix_png"] = head_heatmap(self.prefix_matching, out_dir / f"{name}_prefix_matching.png",
                                           title="prefix-matching score", cmap="Blues")
        if self.copying is not None:
            paths["copying_png"] = head_heatmap(self.copying, out_dir / f"{name}_copying.png",
                                                title="copying score (value at the attended position)", cmap="Greens")
        return paths


class _eager:
    """Run the model with eager attention inside the block (attention weights are returned only then)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = self.model.config._attn_implementation
        if self.saved != "eager":
            self.model.set_attn_implementation("eager")

    def __exit__(self, *exc):
        if self.saved != "eager":
            self.model.set_attn_implementation(self.saved)


def _unembed(model, adapter):
    """x [..., d_model] -> logits [..., vocab] through the final norm (and projection) and the output embedding,
    or None."""
    path, head = adapter.to_logits_input(), model.get_output_embeddings()
    if path is None or head is None:
        return None

    def unembed(x: torch.Tensor) -> torch.Tensor:
        for module in path:
            x = module.forward(x)
        return head.forward(x)
    return unembed


@torch.no_grad()
def induction_scores(model, tokenizer=None, lengths=DEFAULT_LENGTHS, sequences_per_length: int = 8,
                     repeats: int = 4, seed: int = 0, token_counts=None, exclude: float = 0.04, bos_id: int | None = None,
                     head_mask=None, copying: bool = True, progress: bool = True) -> InductionScores:
    """Prefix-matching and copying scores of every head (module docstring), averaged over seeded probe sequences
    of each length in `lengths`."""
    adapter = adapter_for(model)
    if repeats < 2:
        raise BackpackError(f"repeats must be >= 2, got {repeats}")
    from ..model.loading import max_positions

    limit = max_positions(model)
    lengths = [int(n) for n in lengths]
    if any(n < 2 for n in lengths):
        raise BackpackError(f"sequence lengths must be >= 2, got {lengths}")
    vocab = model.config.vocab_size
    skip = special_ids(tokenizer, model.config)
    if bos_id is None:
        bos_id = next((i for i in (getattr(tokenizer, "bos_token_id", None), model.config.bos_token_id,
                                   getattr(tokenizer, "eos_token_id", None), model.config.eos_token_id)
                       if isinstance(i, int) and 0 <= i < vocab), 0)
    candidates = candidate_tokens(vocab, token_counts, exclude, skip | {bos_id})
    # a length must fit `repeats` copies into the positions and be drawable as distinct candidate tokens
    fitting = [n for n in lengths if (limit is None or 1 + repeats * n <= limit) and n <= len(candidates)]
    if not fitting:
        raise BackpackError(f"no sequence length in {lengths} fits {repeats} repeats into the model's {limit} "
                            f"positions with {len(candidates)} candidate tokens")
    unembed = _unembed(model, adapter) if copying else None
    device = model.get_input_embeddings().weight.device

    L, H = adapter.shape
    prefix_sum = torch.zeros(L, H, dtype=torch.float64)
    copy_sum = torch.zeros(L, H, dtype=torch.float64)
    n_queries = 0
    captured: dict[str, dict[int, torch.Tensor]] = {"weights": {}, "values": {}}
    hooks = []
    for layer in range(L):
        hooks.append(adapter.attention(layer).register_forward_hook(
            lambda m, a, out, layer=layer: captured["weights"].__setitem__(layer, out[1])))
        if unembed is not None:
            hooks.append(adapter.value_module(layer).register_forward_hook(
                lambda m, a, out, layer=layer: captured["values"].__setitem__(layer, out)))
    was_training = model.training
    model.eval()
    try:
        with _eager(model), masking(model, head_mask):
            for length in tqdm(fitting, desc="induction probes", unit="length", disable=not progress):
                ids = repeated_sequences(candidates, length, sequences_per_length, bos_id, repeats, seed).to(device)
                targets = induction_targets(length, repeats).to(device)  # [q, k]
                queries = targets.sum(-1) > 0  # positions in repeats 2..R
                model(input_ids=ids)
                for layer in range(L):
                    weights = captured["weights"][layer]
                    if weights is None:
                        raise BackpackError("the attention returned no weights; eager attention is required")
                    matched = (weights.float() * targets).sum(-1)[..., queries]  # [batch, head, queries]
                    prefix_sum[layer] += matched.sum((0, 2)).double().cpu()
                    if unembed is not None:
                        copy_sum[layer] += _copying(adapter, unembed, layer, captured["values"][layer], ids,
                                                    queries, length).cpu()
                n_queries += ids.shape[0] * int(queries.sum())
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return InductionScores(
        prefix_matching=(prefix_sum / n_queries).numpy(),
        copying=None if unembed is None else (copy_sum / n_queries).numpy(),
        lengths=fitting, sequences_per_length=sequences_per_length, repeats=repeats, seed=seed,
        excluded_fraction=exclude if token_counts is not None else None,
    )


def _copying(adapter, unembed, layer: int, value_output: torch.Tensor, ids: torch.Tensor, queries: torch.Tensor,
             length: int) -> torch.Tensor:
    """Summed copying shares [head] over all (sequence, query) pairs of one batch (module docstring)."""
    values = adapter.values(value_output)  # [batch, pos, head, d_head]
    attended = torch.nonzero(queries)[:, 0] - length + 1  # k: right after the previous occurrence
    total = torch.zeros(adapter.num_heads, dtype=torch.float64, device=values.device)
    for b in range(ids.shape[0]):  # one sequence at a time keeps [queries, head, vocab] small
        out = adapter.head_output(layer, values[b, attended])  # [queries, head, d_model]
        probs = F.softmax(unembed(out).float(), dim=-1)  # [queries, head, vocab]
        raised = F.relu(probs - probs.mean(-1, keepdim=True))
        token = ids[b, attended][:, None, None].expand(-1, adapter.num_heads, 1)
        share = raised.gather(-1, token)[..., 0] / raised.sum(-1).clamp(min=1e-12)  # [queries, head]
        total += share.sum(0).double()
    return total


@torch.no_grad()
def repeated_loss(model, ids: torch.Tensor, length: int, head_mask=None) -> float:
    """Mean NLL (nats) of the tokens of repeats 2..R of probe sequences [batch, 1 + R*length] (the predictable
    half), with an optional head mask."""
    device = model.get_input_embeddings().weight.device
    ids = ids.to(device)
    with masking(model, head_mask):
        logits = model(input_ids=ids).logits[:, :-1].float()
    nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids.shape[0], -1)
    return float(nll[:, length:].mean())  # targets at positions >= 1 + length


@dataclass
class CapacityRetained:
    """share[i]: fraction of the total score (over all heads) held by the heads kept after pruning percents[i] %
    by the importance ranking."""

    score: str
    percents: list[float]
    share: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def capacity_retained(scores, importance, percents=tuple(range(0, 100, 10)), score: str = "prefix_matching"
                      ) -> CapacityRetained:
    """How much prefix-matching (or copying) capacity survives pruning p % heads lowest-importance first."""
    percents = check_percents(percents)
    scores = np.asarray(scores, dtype=np.float64)
    importance = np.asarray(importance, dtype=np.float64)
    if scores.shape != importance.shape:
        raise BackpackError(f"scores {list(scores.shape)} and importance {list(importance.shape)} differ in shape")
    total = scores.sum()
    shares = [float((scores * head_prune_mask(importance, p).numpy()).sum() / total) if total else float("nan")
              for p in percents]
    return CapacityRetained(score, percents, shares)
