"""Token lists of different lengths as one padded batch."""

from __future__ import annotations

import torch

from ..errors import BackpackError


def pad_rows(rows: list[list[int]], pad: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [batch, max_len], real [batch, max_len] bool, True on real tokens); rows aligned left ("right" padding)
    or right ("left" padding)."""
    if side not in ("left", "right"):
        raise BackpackError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        real[i, span] = True
    return ids, real
