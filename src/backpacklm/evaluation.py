"""Perplexity of a model on a prepared split or a text file."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from .data.dataset import iter_eval_windows
from .errors import BackpackError
from .model.tied_loss import lean_loss


@torch.no_grad()
def mean_loss(model, tokens: np.ndarray, block_size: int, batch_size: int = 8, max_batches: int | None = None,
              device: str | torch.device = "cpu", progress: bool = False) -> float:
    """Mean next-token cross-entropy (nats/token) over consecutive non-overlapping windows from the start of `tokens`;
    progress: a bar with tokens/s and the running loss on stderr."""
    was_training = model.training
    model.eval()
    forward = lean_loss(model)  # the loss without materializing the logits, where the model allows
    total, count = 0.0, 0
    batches = -(-(len(tokens) // block_size) // batch_size)
    bar = tqdm(total=min(batches, max_batches or batches), unit="batch", disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
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
    if count == 0:
        raise BackpackError(f"the evaluation text has fewer than {block_size + 1} tokens")
    return total / count


def perplexity(model, tokens: np.ndarray, block_size: int | None = None, batch_size: int = 8,
               max_batches: int | None = None, progress: bool = False) -> dict:
    """{'loss': nats/token, 'perplexity': exp(loss), 'tokens': scored tokens, 'block_size': ...}."""
    block_size = block_size or model.config.n_positions
    device = next(model.parameters()).device
    loss = mean_loss(model, tokens, block_size, batch_size, max_batches, device, progress)
    windows = min(len(tokens) // block_size, (max_batches or 10**12) * batch_size)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": windows * (block_size - 1), "block_size": block_size}
