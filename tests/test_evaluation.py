"""Perplexity windows: every token but the first is scored exactly once, with the loss averaged over tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from backpacklm.data.dataset import iter_eval_windows
from backpacklm.errors import BackpackError
from backpacklm.evaluation import mean_loss, perplexity
from backpacklm.model.config import BackpackConfig
from backpacklm.model.transformer import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(BackpackConfig(vocab_size=11, n_embd=16, n_layer=1, n_head=2, num_senses=2, n_positions=8,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()


def window_losses(model, window: list[int]) -> list[float]:
    """Cross-entropy of each token of `window` after the first, from the logits of one forward pass."""
    logits = model(torch.tensor([window])).logits[0, :-1]
    return F.cross_entropy(logits, torch.tensor(window[1:]), reduction="none").tolist()


@torch.no_grad()
def test_windows_overlap_by_one_token_and_score_the_tail(model):
    tokens = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], dtype=np.uint16)
    # block 4: windows [0:4], [3:7], [6:9]... written out: targets 1-3, 4-6, 7-9, each once
    expected = window_losses(model, [3, 1, 4, 1]) + window_losses(model, [1, 5, 9, 2]) \
        + window_losses(model, [2, 6, 5, 3])
    result = perplexity(model, tokens, block_size=4, batch_size=2)
    assert result["tokens"] == 9 and result["loss"] == pytest.approx(sum(expected) / 9, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # block 6: a full window [0:6] and a tail [5:10] of 5 tokens, averaged per token (not per window)
    expected = window_losses(model, [3, 1, 4, 1, 5, 9]) + window_losses(model, [9, 2, 6, 5, 3])
    assert mean_loss(model, tokens, block_size=6) == pytest.approx(sum(expected) / 9, rel=1e-5)


@torch.no_grad()
def test_two_tokens_are_enough(model):
    result = perplexity(model, np.array([7, 2]), block_size=2)
    assert result["tokens"] == 1 and result["loss"] == pytest.approx(window_losses(model, [7, 2])[0], rel=1e-5)


def test_iter_eval_windows_layout_and_errors():
    tokens = np.arange(103, dtype=np.uint16)
    batches = list(iter_eval_windows(tokens, block_size=10, batch_size=4))  # 102 targets = 11 windows of 9 + 3
    assert [tuple(b.shape) for b in batches] == [(4, 10), (4, 10), (3, 10), (1, 4)]
    targets = torch.cat([b[:, 1:].flatten() for b in batches])
    assert torch.equal(targets, torch.arange(1, 103))
    assert batches[0][1, 0] == batches[0][0, -1] and batches[-1][0, 0] == batches[-2][-1, -1]
    assert len(list(iter_eval_windows(tokens, 10, 4, max_batches=2))) == 2
    assert [tuple(b.shape) for b in iter_eval_windows(tokens[:5], 10, 4)] == [(1, 5)]
    with pytest.raises(BackpackError, match="block size must be at least 2"):
        next(iter_eval_windows(tokens, 1, 4))
    with pytest.raises(BackpackError, match="1 token"):
        next(iter_eval_windows(tokens[:1], 10, 4))
