"""Gist attention masks for decoder-only models (Mu et al. 2023, sec. 3, fig. 2), on top of causal and padding masks.

With g_first / g_last the positions of the first / last `<GIST>` token of a row, query i may see key j <= i when
    gist         i <= g_last, or j >= g_first      (after the gists: only the gists and later tokens, never the instruction)
    pos_control  always                             (plain causal; the gists stay in the sequence)
    neg_control  i <= g_last, or j > g_last        (after the gists: neither the instruction nor the gists)
and j is not padding. A row without gist tokens is plain causal. Every position may see itself, so no row of the
mask is empty (padding queries then attend to themselves only; their outputs are ignored).

Hugging Face attention takes the mask as an additive float [batch, 1, query_pos, key_pos] tensor (0 where allowed,
finfo(dtype).min elsewhere): a boolean 4D mask is misread by eager attention.
"""

from __future__ import annotations

import torch

from ..errors import BackpackError

CONDITIONS = ("gist", "pos_control", "neg_control")


def gist_bounds(input_ids: torch.Tensor, gist_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) gist position per row, [batch] each; rows without gists get (pos, pos) (no effect)."""
    n = input_ids.shape[1]
    positions = torch.arange(n, device=input_ids.device).expand_as(input_ids)
    is_gist = input_ids == gist_id if gist_id is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    first = torch.where(is_gist, positions, n).min(dim=1).values
    last = torch.where(is_gist, positions, -1).max(dim=1).values
    none = last < 0
    return torch.where(none, n, first), torch.where(none, n, last)


def allowed_attention(
    input_ids: torch.Tensor, gist_id: int | None, condition: str = "gist", padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean [batch, 1, pos, pos]: True where query i may attend to key j (see module docstring)."""
    if condition not in CONDITIONS:
        raise BackpackError(f"unknown gist condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    batch, n = input_ids.shape
    device = input_ids.device
    query = torch.arange(n, device=device).view(1, n, 1)
    key = torch.arange(n, device=device).view(1, 1, n)
    allowed = (key <= query).expand(batch, n, n)
    if padding_mask is not None:
        allowed = allowed & padding_mask.bool().view(batch, 1, n)
    first, last = (b.view(batch, 1, 1) for b in gist_bounds(input_ids, gist_id))
    after_gists = query > last
    if condition == "gist":
        allowed = allowed & ~(after_gists & (key < first))
    elif condition == "neg_control":
        allowed = allowed & ~(after_gists & (key <= last))
    allowed = allowed | (key == query)
    return allowed.unsqueeze(1)


def to_additive(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean mask -> additive float mask: 0 where allowed, finfo(dtype).min elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def gist_attention_mask(
    input_ids: torch.Tensor,
    gist_id: int | None,
    condition: str = "gist",
    padding_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive float [batch, 1, pos, pos] mask for `condition` (input_ids [batch, pos], padding_mask [batch, pos])."""
    return to_additive(allowed_attention(input_ids, gist_id, condition, padding_mask), dtype)


def padded_position_ids(padding_mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids [batch, pos] counting only real tokens, from `start` ([batch] or int); padding gets `start`.

    Left-padded rows thus get the positions they would have alone: required for exactness across batch sizes.
    """
    counts = padding_mask.long().cumsum(dim=1) - 1
    start = torch.as_tensor(start, device=padding_mask.device).view(-1, 1)
    return counts.clamp(min=0) + start
