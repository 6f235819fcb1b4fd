"""Next-token cross-entropy through the tied output layer without holding the [tokens, V] logits, and `LeanLoss`, the
module training and evaluation call to get a model's loss that way (Backpack, or GPT-2 with its tied head).

With V = 50264 the logits of a batch of 8 x 512 tokens take 823 MB in float32, and a plain
`F.cross_entropy(hidden @ E.T, targets)` keeps several such tensors alive (logits, log-softmax for backward, their
gradients): most of a training step's memory. Here the loss and its gradients are computed `chunk` rows at a time:

    z = h E^T                          [rows, V]   (per chunk, float32)
    loss = sum_i (logsumexp(z_i) - z_i[t_i]) / n          (n = targets that are not -100)
    dloss/dz_i = (softmax(z_i) - onehot(t_i)) / n         (0 for ignored rows)
    dloss/dh = (dloss/dz) E        dloss/dE = (dloss/dz)^T h

The gradients are taken in the forward pass (the loss is a scalar, so they only need scaling by the incoming
gradient later): the same multiply-adds as the plain version, no recomputation, and at most [chunk, V] of logits
alive at once. The result equals the plain version to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GPT2LMHeadModel
from transformers.modeling_outputs import CausalLMOutput

IGNORE = -100


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """labels [batch, pos] -> targets [batch * pos]: position t predicts token t+1; the last position (and any -100)
    is ignored. Shifting the labels, not the logits, avoids a copy of [batch, pos, V]."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE).flatten()


def tied_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits = hidden @ weight.T against targets.

    hidden [tokens, d]; weight [V, d] (the tied embedding); targets [tokens] (IGNORE = -100 skipped);
    chunk: rows of logits computed at once. Returns a scalar; differentiable in hidden and weight."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _TiedCrossEntropy.apply(hidden, weight, targets, chunk)
    return _chunked(hidden, weight, targets, chunk, with_grads=False)[0]


def _chunked(hidden, weight, targets, chunk, with_grads):
    """(loss, dloss/dhidden, dloss/dweight); the gradients are None unless with_grads."""
    keep = targets != IGNORE
    count = keep.sum().clamp(min=1)  # all ignored: loss 0 (F.cross_entropy would give NaN)
    safe_targets = targets.clamp(min=0)
    total = hidden.new_zeros((), dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grads else None
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        h, t, k = hidden[rows], safe_targets[rows], keep[rows]
        logits = (h @ weight.T).float()  # [rows, V]
        log_z = torch.logsumexp(logits, dim=-1)  # [rows]
        target_logit = logits.gather(1, t.unsqueeze(1)).squeeze(1)
        total = total + ((log_z - target_logit) * k).sum()
        if with_grads:
            grad = torch.exp(logits - log_z.unsqueeze(1))  # softmax, in place of the logits' memory
            del logits
            grad.scatter_add_(1, t.unsqueeze(1), -torch.ones_like(log_z).unsqueeze(1))
            grad.mul_((k / count).unsqueeze(1))  # [rows, V]
            grad = grad.to(h.dtype)
            grad_hidden[rows] = grad @ weight.to(h.dtype)
            grad_weight += (grad.T @ h).float()
    return total / count, grad_hidden, grad_weight


class _TiedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        loss, grad_hidden, grad_weight = _chunked(hidden, weight, targets, chunk, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype), None, None


class LeanLoss(nn.Module):
    """The module the trainer and evaluation call with (input_ids, labels, ...): the model's loss without its
    [batch, pos, V] logits. A Backpack runs `forward(return_logits=False)`; a GPT-2 LM whose head is its tied
    embedding runs its trunk, then `tied_cross_entropy`. It wraps the model, so DDP and the optimizer see the model's
    own parameters. Output: `.loss` only."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, use_cache: bool = False, **kwargs) -> CausalLMOutput:
        if self.model.config.model_type == "backpack":
            return self.model(input_ids=input_ids, labels=labels, use_cache=False, return_logits=False, **kwargs)
        hidden = self.model.transformer(input_ids=input_ids, use_cache=False, **kwargs).last_hidden_state
        loss = tied_cross_entropy(hidden.flatten(0, 1), self.model.lm_head.weight, next_token_targets(labels))
        return CausalLMOutput(loss=loss)


def lean_loss(model):
    """`LeanLoss(model)` for a Backpack or a GPT-2 LM with a tied, bias-free head; any other model as it is."""
    if getattr(model.config, "model_type", None) == "backpack":
        return LeanLoss(model)
    if isinstance(model, GPT2LMHeadModel) and model.lm_head.bias is None and \
            model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr():
        return LeanLoss(model)
    return model
