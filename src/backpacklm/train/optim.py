"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices of Linear/Conv1D layers; never biases, LayerNorms or embeddings."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and id(param) not in embeddings else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused or None)


def learning_rate(step: int, max_lr: float, min_lr: float, warmup: int, total: int, decay: str = "cosine") -> float:
    """Linear warmup over `warmup` steps, then cosine or linear decay from max_lr to min_lr at `total` steps."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if decay == "constant" or step >= total:
        return max_lr if decay == "constant" else min_lr
    progress = (step - warmup) / max(1, total - warmup)
    if decay == "linear":
        return max_lr + (min_lr - max_lr) * progress
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
