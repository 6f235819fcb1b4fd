"""Perplexity of a model on a prepared split or a text file."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from .data.dataset import eval_window_count, iter_eval_windows
from .errors import BackpackError
from .model.loading import max_positions, require_causal_lm
from .model.tied_loss import lean_loss


@torch.no_grad()
def mean_loss(model, tokens: np.ndarray, block_size: int, batch_size: int = 8, max_batches: int | None = None,
              device: str | torch.device = "cpu", progress: bool = False) -> float:
    """Mean next-token cross-entropy (nats/token) of `tokens`, read in windows of `block_size` that overlap by one
    token (`iter_eval_windows`): every token but the first is scored once, with the window's earlier tokens as
    context; progress: a bar with tokens/s and the running loss on stderr."""
    return _mean_loss_and_count(model, tokens, block_size, batch_size, max_batches, device, progress)[0]


def _mean_loss_and_count(model, tokens, block_size, batch_size, max_batches, device, progress) -> tuple[float, int]:
    """(mean loss, number of scored tokens) over the first `max_batches` batches of `iter_eval_windows`."""
    was_training = model.training
    model.eval()
    forward = lean_loss(model)  # the loss without materializing the logits, where the model allows
    total, count = 0.0, 0
    batches = min(eval_window_count(len(tokens), block_size, batch_size), max_batches or math.inf)
    bar = tqdm(total=batches, unit="batch", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    for batch in iter_eval_windows(tokens, block_size, batch_size, max_batches):
        batch = batch.to(device)
        n = batch.shape[0] * (batch.shape[1] - 1)
        total += forward(input_ids=batch, labels=batch, use_cache=False).loss.item() * n
        count += n
        bar.update(1)
        bar.set_postfix(loss=f"{total / count:.4f}", tok_s=f"{count / max(bar.format_dict['elapsed'], 1e-9):,.0f}",
                        refresh=False)
    bar.close()
    model.train(was_training)
    return total / count, count


def perplexity(model, tokens: np.ndarray, block_size: int | None = None, batch_size: int = 8,
               max_batches: int | None = None, progress: bool = False) -> dict:
    """{'loss': nats/token, 'perplexity': exp(loss), 'tokens': scored tokens (all but the first, unless
    max_batches stops earlier), 'block_size': ...}; block_size defaults to the model's positions."""
    require_causal_lm(model, "perplexity")
    positions = max_positions(model)
    block_size = block_size or positions
    if block_size is None:
        raise BackpackError("the model's positions are unbounded; give a block size")
    if positions and block_size > positions:
        raise BackpackError(f"block size {block_size} exceeds the model's {positions} positions")
    device = next(model.parameters()).device
    loss, count = _mean_loss_and_count(model, tokens, block_size, batch_size, max_batches, device, progress)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "block_size": block_size}
