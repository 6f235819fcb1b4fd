"""A tiny model trained here on data with known structure: it must form induction heads.

Data: BOS + a block of 3-8 distinct random tokens (of 26) repeated to fill 32 positions; the loss is on the repeats
only (the first block is unpredictable).

Why a minimal loop and not `backpacklm.train.loop.train`: the trainer builds our GPT-2 trunk (learned absolute
positions) and takes the loss on every token of a flat token stream. Measured here, a 2-layer GPT-2 (d 32-64) trained
on such data for 600 steps had formed no induction head (layer-2 prefix-matching 0.02-0.06), while a 2-layer model
with rotary positions (the Llama layout, a supported architecture) and the loss on the repeats forms them in about
150-450 steps; 1500 (below) make one head carry the circuit on every seed tried, within the test budget. (The
in-context task model of the ground-truth tests is trained with our trainer: `backpacklm.worlds.icl_tasks`.)
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 26  # random tokens 0..25; BOS = 26
SEQ = 32
HEADS = 4


def train_induction_model(steps: int = 1200, sharpen_steps: int = 300, batch: int = 32, seed: int = 1, lr: float = 6e-3,
                          weight_decay: float = 1.0, sharpen_lr: float = 1e-3):
    """2 layers x 4 heads, d 64; returns the model in eval mode (BOS id = VOCAB).

    Two phases of AdamW. First `steps` with strong weight decay and a 30-step warmup: it makes heads specialise.
    Without it the four layer-2 heads all became induction heads of about equal strength (measured: prefix-matching
    0.62-0.81 each), so ablating any one of them changed little. The old 450 steps at lr 3e-3 were not enough: on
    seeds 0, 2 and 3 the layer-2 heads still shared the work (ablating the top one raised the loss 0.03-0.18 nats; the
    test needs > 0.2 and 2x the mean of the other heads), and seed 1, the fixture's, passed with top prefix-matching
    0.59 against > 0.5. Specialisation runs at the decay rate lr x weight_decay: at lr 3e-3 seed 3 still had two
    induction heads after 1200 steps, at 6e-3 seed 2 after 900; at 6e-3 and 1200 steps one head does the job on seeds
    0-3. The decay also caps how sharply that head attends (top prefix-matching 0.47-0.57 after 1800 steps at 3e-3),
    so `sharpen_steps` follow without decay at a lower rate: they sharpen the circuit now in place. Measured on seeds
    0-3: top prefix-matching 0.66-0.68, ablating it raises the loss 4.2-4.6 nats, 5.1-6.6x the mean of the others."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=HEADS,
                         vocab_size=VOCAB + 1, max_position_embeddings=64, bos_token_id=VOCAB, eos_token_id=VOCAB,
                         pad_token_id=VOCAB)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    model.train()
    _train(model, g, steps, batch, lr, weight_decay, warmup=30)
    _train(model, g, sharpen_steps, batch, sharpen_lr, 0.0, warmup=1)
    return model.eval()


def _batch(g: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + one block of 3-8 distinct tokens repeated to SEQ positions per row; labels only on the repeats."""
    n = int(torch.randint(3, 9, (1,), generator=g))
    blocks = torch.rand(batch, VOCAB, generator=g).argsort(-1)[:, :n]
    ids = torch.cat([torch.full((batch, 1), VOCAB), blocks.repeat(1, SEQ // n + 1)[:, :SEQ - 1]], 1)
    labels = ids.clone()
    labels[:, :n + 1] = -100
    return ids, labels


def _train(model, g: torch.Generator, steps: int, batch: int, lr: float, weight_decay: float, warmup: int) -> None:
    """`steps` AdamW steps (a fresh optimizer: each phase has its own decay) with a linear warmup, clipped at 1."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    for _ in range(steps):
        ids, labels = _batch(g, batch)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
