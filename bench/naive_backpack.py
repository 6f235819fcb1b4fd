"""A straightforward Backpack LM, written the way most public Backpack code does it. The benchmarks' baseline.

Same equations as backpacklm.model.BackpackForCausalLM (Hewitt et al. 2023), none of its shortcuts:

    trunk     nanoGPT-style GPT-2: learned positions, pre-LN blocks, gelu_tanh MLP, attention logits scaled by
              1/sqrt(dh) and by 1/(layer+1), a materialized causal mask and an explicit softmax
              (as in the official Backpack / nanoBackpackLM code)
    senses    C(x_j) for EVERY position j: [B, T] -> [B, T, k, d]   (ours: once per distinct token id)
    weights   alpha = softmax(mask(Q h . K h / sqrt(d/k)))          materialized [B, k, T, T]  (ours: fused SDPA)
    output    o = sum_l alpha_l @ C_l;   logits = o E^T;   loss = CE(logits[:, :-1], input_ids[:, 1:])

`load_from(ours)` copies our weights in (our trunk keeps HF Conv1D weights as [in, out], nn.Linear is [out, in]).
Run this file to check both models give the same logits:  .venv/bin/python bench/naive_backpack.py
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        d, T = config.n_embd, config.n_positions
        self.n_head = config.n_head
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.scale = 1.0 / math.sqrt(d // self.n_head) / (layer_idx + 1)
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.scale
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, d_in, d_inner, d_out, dropout):
        super().__init__()
        self.c_fc = nn.Linear(d_in, d_inner)
        self.c_proj = nn.Linear(d_inner, d_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        d = config.n_embd
        self.ln_1 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(d, eps=config.layer_norm_epsilon)
        self.mlp = MLP(d, 4 * d, d, config.resid_pdrop)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Trunk(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.n_positions, d)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_epsilon)

    def forward(self, idx):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class SenseNetwork(nn.Module):
    """C(x) = FFN_2(LN_c(r2)), r2 = r1 + FFN_1(LN_b(r1)), r1 = r0 + LN_a(r0), r0 = E[x]; run on every position."""

    def __init__(self, config):
        super().__init__()
        d, eps = config.n_embd, config.layer_norm_epsilon
        inner_1, inner_2 = config.sense_inner_sizes
        self.num_senses = config.num_senses
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.ln_a = nn.LayerNorm(d, eps=eps)
        self.ln_b = nn.LayerNorm(d, eps=eps)
        self.mlp = MLP(d, inner_1, d, config.resid_pdrop)
        self.ln_c = nn.LayerNorm(d, eps=eps)
        self.final_mlp = MLP(d, inner_2, self.num_senses * d, config.resid_pdrop)

    def forward(self, emb):  # [B, T, d] -> [B, k, T, d]
        B, T, d = emb.shape
        r0 = self.dropout(emb)
        r1 = r0 + self.ln_a(r0)
        r2 = r1 + self.mlp(self.ln_b(r1))
        senses = self.final_mlp(self.ln_c(r2))  # [B, T, k*d]
        return senses.view(B, T, self.num_senses, d).transpose(1, 2)


class SenseWeights(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_senses = config.num_senses
        self.c_attn = nn.Linear(config.n_embd, 2 * config.n_embd)
        T = config.n_positions
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T), persistent=False)

    def forward(self, h):  # [B, T, d] -> alpha [B, k, T, T]
        B, T, d = h.shape
        k = self.num_senses
        q, key = self.c_attn(h).split(d, dim=2)
        q = q.view(B, T, k, d // k).transpose(1, 2)
        key = key.view(B, T, k, d // k).transpose(1, 2)
        att = (q @ key.transpose(-2, -1)) / math.sqrt(d // k)
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        return F.softmax(att, dim=-1)


class NaiveBackpack(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Trunk(config)
        self.sense_network = SenseNetwork(config)
        self.sense_weights = SenseWeights(config)

    def forward(self, input_ids, labels=None):
        """Returns (logits [B, T, V], loss or None). labels are shifted inside, as in Hugging Face models."""
        h = self.transformer(input_ids)  # [B, T, d]
        senses = self.sense_network(self.transformer.wte(input_ids))  # [B, k, T, d]
        alpha = self.sense_weights(h)  # [B, k, T, T]
        o = torch.sum(alpha @ senses, dim=1)  # [B, T, d]
        logits = o @ self.transformer.wte.weight.T  # [B, T, V]
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].contiguous()
            shift_labels = labels[:, 1:].contiguous()
            loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def load_from(self, ours) -> "NaiveBackpack":
        """Copy the weights of a backpacklm BackpackForCausalLM (Conv1D weights transposed to nn.Linear layout)."""
        from transformers.pytorch_utils import Conv1D

        state = dict(ours.state_dict())
        for name, module in ours.named_modules():
            if isinstance(module, Conv1D):
                state[f"{name}.weight"] = state[f"{name}.weight"].t()
        self.load_state_dict(state, strict=True)
        return self

    @classmethod
    def from_ours(cls, ours) -> "NaiveBackpack":
        return cls(ours.config).to(device=ours.device, dtype=ours.dtype).train(ours.training).load_from(ours)


@torch.no_grad()
def max_logit_diff(ours, naive, input_ids) -> float:
    """max |logits_ours - logits_naive| for the same input (both in eval mode for the comparison)."""
    modes = ours.training, naive.training
    ours.eval(), naive.eval()
    try:
        a = ours(input_ids, use_cache=False).logits
        b, _ = naive(input_ids)
        return (a - b).abs().max().item()
    finally:
        ours.train(modes[0]), naive.train(modes[1])


if __name__ == "__main__":
    from backpacklm.model import BackpackConfig, BackpackForCausalLM

    torch.manual_seed(0)
    for config in (
        BackpackConfig(n_layer=4, n_head=4, n_embd=128, num_senses=4, vocab_size=65, n_positions=64,
                       resid_pdrop=0, embd_pdrop=0, attn_pdrop=0),
        BackpackConfig.from_preset("tiny", vocab_size=65),
    ):
        ours = BackpackForCausalLM(config)
        naive = NaiveBackpack.from_ours(ours)
        x = torch.randint(config.vocab_size, (3, config.n_positions))
        diff = max_logit_diff(ours, naive, x)
        loss_ours = ours(x, labels=x, use_cache=False).loss.item()
        loss_naive = naive(x, labels=x)[1].item()
        print(f"L={config.n_layer} d={config.n_embd} k={config.num_senses} T={config.n_positions}: "
              f"max |logit diff| = {diff:.2e}, loss {loss_ours:.6f} vs {loss_naive:.6f}")
        assert diff < 1e-5 and abs(loss_ours - loss_naive) < 1e-5
        # at init the logits are ~1e-2; add N(0, 0.1^2) to every weight so they are ~10 and check again (relative)
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(0.1 * torch.randn_like(p))
        naive = NaiveBackpack.from_ours(ours)
        diff = max_logit_diff(ours, naive, x)
        scale = ours(x, use_cache=False).logits.abs().max().item()
        print(f"  with perturbed weights: max |logit diff| = {diff:.2e} for logits up to {scale:.1f}")
        assert diff < 1e-5 * max(1.0, scale)
    print("ok: naive and ours agree")
