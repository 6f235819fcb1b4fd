"""Head importance from activation gradients (Bansal et al. 2023, eq. 8-9; Michel et al. 2019).

The loss of an example is the mean negative log-likelihood of its gold answer tokens only (the k-shot prompt is
context). With a = head h's output at the gate (the input slice of the attention output projection) at token t:

  method "token" (default, eq. 8-9):  I_h = (1 / N_tokens) * sum_examples sum_t | sum_d a[t, d] * dL/da[t, d] |
      the absolute value is taken per token, so contributions of opposite sign at different tokens do not cancel;
      N_tokens counts every non-padding token of every prompt.
  method "gate" (Michel et al.):       I_h = (1 / N_examples) * sum_examples | dL/dg_h |,  with dL/dg_h = sum_t a·dL/da
      the gradient of a per-example head gate g_h = 1; signs cancel across tokens within an example.

`normalize="layer"` divides every layer's scores by their L2 norm (Michel et al.'s per-layer normalisation), which
makes layers comparable when one global ranking is cut. Every head of every layer comes from one backward per batch:
per-token gates (ones, requiring grad) on each output projection's input, with all parameters frozen, so autograd
computes activation gradients only and allocates no parameter .grad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..atomic import replacing, write_json_atomic
from ..errors import BackpackError
from .adapters import adapter_for
from .gates import frozen_parameters, masking, probing
from .scores import ScoreTable

METHODS = ("token", "gate")
NORMALIZATIONS = ("none", "layer")


@dataclass
class HeadImportance(ScoreTable):
    """scores [layer, head] (higher = more important) and how they were computed."""

    kind = "importance"

    scores: np.ndarray
    method: str = "token"
    normalize: str = "none"
    task: str | None = None
    k: int | None = None
    seed: int | None = None
    examples: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    loss: float = float("nan")  # mean answer NLL (nats/token) over the examples
    extra: dict = field(default_factory=dict)

    def ranking(self) -> list[tuple[int, int]]:
        """(layer, head) from most to least important (ties: lower layer, then lower head first)."""
        flat = np.asarray(self.scores, dtype=np.float64).ravel()
        order = np.argsort(-flat, kind="stable")
        heads = self.scores.shape[1]
        return [(int(i) // heads, int(i) % heads) for i in order]

    @staticmethod
    def ranking_label(entry: tuple[int, int]) -> str:
        layer, head = entry
        return f"{layer}.{head}"

    def save(self, out_dir: str | Path, name: str = "importance") -> dict[str, Path]:
        """Write <name>.json, <name>.npy and <name>.png (heatmap) into out_dir; returns the paths."""
        from .plots import head_heatmap

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / f"{name}.json", "npy": out_dir / f"{name}.npy", "png": out_dir / f"{name}.png"}
        write_json_atomic(paths["json"], self.to_dict())
        with replacing(paths["npy"]) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(self.scores))
        title = f"head importance ({self.method}{', layer-normalised' if self.normalize == 'layer' else ''})"
        head_heatmap(self.scores, paths["png"], title=title + (f" - {self.task}" if self.task else ""))
        return paths


def answer_nll(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean NLL (nats) of the answer tokens: logits [batch, pos, vocab], input_ids / answer_mask
    [batch, pos] -> [batch]. Token t is predicted at position t-1."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0]  # [batch, pos-1]
    mask = answer_mask[:, 1:].to(nll.dtype)
    return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def importance_from_batches(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                            method: str = "token", normalize: str = "none", head_mask=None, ffn_mask=None,
                            total: int | None = None, progress: bool = True) -> HeadImportance:
    """Head importance (module docstring) over batches of (input_ids, attention_mask, answer_mask), each
    [batch, pos]; optional masks apply during the measurement (e.g. importance of the heads left after pruning)."""
    if method not in METHODS:
        raise BackpackError(f"importance method must be one of {', '.join(METHODS)}, got {method!r}")
    if normalize not in NORMALIZATIONS:
        raise BackpackError(f"importance normalisation must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    adapter = adapter_for(model)
    device = model.get_input_embeddings().weight.device
    sums = torch.zeros(adapter.shape, dtype=torch.float64)
    examples = tokens = answer_tokens = 0
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        with frozen_parameters(model), masking(model, head_mask, ffn_mask), probing(model) as probe:
            for input_ids, attention_mask, answer_mask in tqdm(batches, total=total, desc="head importance",
                                                               unit="batch", disable=not progress):
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                per_example = answer_nll(logits, input_ids, answer_mask.to(device))  # [batch]
                per_example.sum().backward()  # example b's gates get dL_b/dg: examples do not interact
                scores = probe.token_scores()  # [layer, batch, pos, head]: a·dL/da per token
                valid = attention_mask.bool().cpu()[None, :, :, None]
                if method == "token":
                    sums += (scores.abs() * valid).sum((1, 2)).double()
                else:
                    sums += (scores * valid).sum(2).abs().sum(1).double()
                examples += input_ids.shape[0]
                tokens += int(attention_mask.sum())
                answer_tokens += int(answer_mask[:, 1:].sum())
                loss_sum += float(per_example.detach().sum())
                probe.gates.clear()
    finally:
        model.train(was_training)
    if examples == 0:
        raise BackpackError("no examples to compute head importance on")
    if answer_tokens == 0:
        raise BackpackError("no answer tokens to compute head importance on (every answer_mask is empty)")
    scores = (sums / (tokens if method == "token" else examples)).numpy()
    if normalize == "layer":
        norms = np.linalg.norm(scores, axis=1, keepdims=True)
        scores = scores / np.where(norms > 0, norms, 1.0)
    return HeadImportance(scores=scores, method=method, normalize=normalize, examples=examples, tokens=tokens,
                          answer_tokens=answer_tokens, loss=loss_sum / examples)


def head_importance(model, tokenizer, task, k: int = 0, seed: int = 0, batch_size: int = 8, method: str = "token",
                    normalize: str = "none", head_mask=None, ffn_mask=None, progress: bool = True) -> HeadImportance:
    """Importance of every head for `task`: its k-shot prompts (seeded demonstrations) with the gold answer appended,
    loss = mean NLL of the answer tokens (see the module docstring for the score)."""
    from ..model.loading import max_positions
    from .tasks import answer_batches

    if batch_size < 1:
        raise BackpackError(f"batch size must be >= 1, got {batch_size}")
    batches = answer_batches(tokenizer, task, k=k, seed=seed, batch_size=batch_size, max_length=max_positions(model))
    result = importance_from_batches(model, batches, method, normalize, head_mask, ffn_mask,
                                     total=math.ceil(len(task.examples) / batch_size), progress=progress)
    result.task, result.k, result.seed = task.name, k, seed
    return result
