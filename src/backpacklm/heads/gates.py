"""Head gates and FFN knock-outs as context managers that install hooks and remove them on exit.

A head gate g[layer, head] multiplies head h's slice [h*d_head, (h+1)*d_head) of the attention output projection's
input (a forward pre-hook), so the projection's bias stays, as in Bansal et al. (2023). An FFN gate multiplies the FFN
block's output. Gates are moved to each layer's device, so `device_map`-sharded models work. A gate tensor that
requires grad receives dL/dg by autograd: the summed per-token a·dL/da of eq. 8 (Bansal et al. 2023).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import BackpackError
from .adapters import HeadAdapter, adapter_for


def _scale_heads(x: torch.Tensor, gate: torch.Tensor, head_dim: int) -> torch.Tensor:
    """x [..., head * d_head] times gate [..., head] broadcast over each head's d_head slice."""
    return x * gate.to(x.dtype).repeat_interleave(head_dim, dim=-1)


def check_head_mask(adapter: HeadAdapter, head_mask) -> torch.Tensor:
    mask = torch.as_tensor(head_mask)
    if mask.shape != adapter.shape:
        raise BackpackError(f"head mask has shape {list(mask.shape)}; this model needs {list(adapter.shape)} "
                            f"(layers, heads)")
    return mask if mask.is_floating_point() else mask.float()


def check_ffn_mask(adapter: HeadAdapter, ffn_mask) -> torch.Tensor:
    mask = torch.as_tensor(ffn_mask)
    if mask.shape != (adapter.num_layers,):
        raise BackpackError(f"FFN mask has shape {list(mask.shape)}; this model needs [{adapter.num_layers}] (layers)")
    return mask if mask.is_floating_point() else mask.float()


def head_mask_without(adapter: HeadAdapter, heads) -> torch.Tensor:
    """All-ones [layer, head] mask with the given (layer, head) pairs set to 0."""
    mask = torch.ones(adapter.shape)
    for layer, head in heads:
        adapter.check_head(layer, head)
        mask[layer, head] = 0.0
    return mask


def ffn_mask_without(adapter: HeadAdapter, layers) -> torch.Tensor:
    """All-ones [layer] mask with the given layers set to 0."""
    mask = torch.ones(adapter.num_layers)
    for layer in layers:
        adapter.check_layer(layer)
        mask[layer] = 0.0
    return mask


@contextmanager
def masking(model: nn.Module, head_mask=None, ffn_mask=None) -> Iterator[HeadAdapter]:
    """Run `model` with head_mask [layer, head] and/or ffn_mask [layer] applied (1 keep, 0 remove, floats scale).

    Layers whose gates are all exactly 1 and need no gradient get no hook (the result is identical)."""
    adapter = adapter_for(model)
    handles = []
    try:
        if head_mask is not None:
            head_mask = check_head_mask(adapter, head_mask)
            for layer in range(adapter.num_layers):
                gate = head_mask[layer]
                if not gate.requires_grad and bool((gate == 1).all()):
                    continue
                gate = gate.to(adapter.device(layer))  # differentiable: dL/dg flows back to head_mask

                def gate_heads(module, args, gate=gate):
                    return (_scale_heads(args[0], gate, adapter.head_dim), *args[1:])

                handles.append(adapter.attn_out(layer).register_forward_pre_hook(gate_heads))
        if ffn_mask is not None:
            ffn_mask = check_ffn_mask(adapter, ffn_mask)
            for layer in range(adapter.num_layers):
                gate = ffn_mask[layer]
                if not gate.requires_grad and bool(gate == 1):
                    continue
                gate = gate.to(adapter.device(layer))

                def gate_ffn(module, args, output, gate=gate):
                    if isinstance(output, tuple):
                        return (output[0] * gate.to(output[0].dtype), *output[1:])
                    return output * gate.to(output.dtype)

                handles.append(adapter.ffn_out(layer).register_forward_hook(gate_ffn))
        yield adapter
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class HeadProbe:
    """Per-token gates of the last forward: gates[layer] [batch, pos, head], all ones and requiring grad, so after
    a backward `gates[layer].grad[b, t, h]` = sum_d a[b, t, h, d] · dL/da[b, t, h, d] (the summand of eq. 8,
    Bansal et al. 2023), for every head from one backward. With `keep_activations`, activations[layer] holds the
    head outputs a [batch, pos, head, d_head] (detached)."""

    adapter: HeadAdapter
    keep_activations: bool = False
    gates: dict[int, torch.Tensor] = field(default_factory=dict)
    activations: dict[int, torch.Tensor] = field(default_factory=dict)

    def token_scores(self) -> torch.Tensor:
        """a·dL/da per token: [layer, batch, pos, head] on the CPU (after backward)."""
        missing = [layer for layer in range(self.adapter.num_layers)
                   if layer not in self.gates or self.gates[layer].grad is None]
        if missing:
            raise BackpackError(f"no gradient reached the heads of layer(s) {missing}: run a forward and a backward "
                                f"inside the probing block")
        return torch.stack([self.gates[layer].grad.float().cpu() for layer in range(self.adapter.num_layers)])


@contextmanager
def probing(model: nn.Module, keep_activations: bool = False) -> Iterator[HeadProbe]:
    """Install per-token head gates on every layer (see `HeadProbe`); compose with `masking` freely."""
    adapter = adapter_for(model)
    probe = HeadProbe(adapter, keep_activations)
    H, dh = adapter.num_heads, adapter.head_dim

    def make_hook(layer: int):
        def hook(module, args):
            x = args[0]  # [batch, pos, head * d_head]
            gate = torch.ones(*x.shape[:-1], H, device=x.device, dtype=x.dtype, requires_grad=True)
            probe.gates[layer] = gate
            if keep_activations:
                probe.activations[layer] = x.detach().unflatten(-1, (H, dh))
            return (_scale_heads(x, gate, dh), *args[1:])
        return hook

    with ExitStack() as stack:
        for layer in range(adapter.num_layers):
            stack.callback(adapter.attn_out(layer).register_forward_pre_hook(make_hook(layer)).remove)
        yield probe


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """requires_grad False on every parameter inside the block (restored after): backward then computes activation
    gradients only and allocates no parameter .grad."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
