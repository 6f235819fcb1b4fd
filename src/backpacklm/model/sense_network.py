"""The sense network: k context-free sense vectors per token id (Hewitt et al. 2023, eq. 3).

    r0 = E[x]
    r1 = r0 + LN_a(r0)                  (adds the embedding to its own LayerNorm, as the published weights do)
    r2 = r1 + FFN_1(LN_b(r1))           FFN_1: d -> 4d -> d
    C(x) = FFN_2(LN_c(r2))              FFN_2: d -> s*d -> k*d, reshaped sense-major to [k, d]

No positions and no mixing across positions: C depends only on the token id, so callers run it once per distinct id.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import BackpackConfig


class SenseMLP(nn.Module):
    """FFN(z) = W2 gelu_tanh(W1 z + b1) + b2, followed by residual dropout."""

    def __init__(self, d_in: int, d_inner: int, d_out: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(d_in, d_inner)
        self.c_proj = nn.Linear(d_inner, d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(z), approximate="tanh")))


class SenseNetwork(nn.Module):
    def __init__(self, config: BackpackConfig):
        super().__init__()
        d, eps = config.n_embd, config.layer_norm_epsilon
        inner_1, inner_2 = config.sense_inner_sizes
        self.num_senses = config.num_senses
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.ln_a = nn.LayerNorm(d, eps=eps)
        self.ln_b = nn.LayerNorm(d, eps=eps)
        self.mlp = SenseMLP(d, inner_1, d, config.resid_pdrop)
        self.ln_c = nn.LayerNorm(d, eps=eps)
        self.final_mlp = SenseMLP(d, inner_2, self.num_senses * d, config.resid_pdrop)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings: [..., d] rows of E  ->  senses [..., k, d]."""
        r0 = self.dropout(embeddings)
        r1 = r0 + self.ln_a(r0)
        r2 = r1 + self.mlp(self.ln_b(r1))
        senses = self.final_mlp(self.ln_c(r2))
        return senses.unflatten(-1, (self.num_senses, embeddings.shape[-1]))
