"""Pruning masks, curves (0 % = unmasked exactly), FFN importance, aggregate rankings and the rank correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.heads import adapter_for
from backpacklm.heads.ffn import ffn_importance
from backpacklm.heads.pruning import (
    aggregate_scores, ffn_prune_mask, ffn_pruning_curve, head_prune_mask, head_pruning_curve, n_removed,
    pruning_grid, rank_correlation, ranking_transfer, save_curves, save_grid,
)
from backpacklm.heads.tasks import builtin_task, evaluate_task
from backpacklm.worlds.icl_tasks import icl_corpus

from .models import tiny_config, MODEL_CLASSES


def test_masks_remove_the_lowest_scores_globally():
    scores = np.array([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.05, 0.7]])
    assert torch.equal(head_prune_mask(scores, 0), torch.ones(2, 4))
    mask = head_prune_mask(scores, 40)  # round(3.2) = 3 heads: 0.05, 0.1, 0.2
    assert mask.tolist() == [[1, 0, 1, 1], [0, 1, 0, 1]]
    assert int((head_prune_mask(scores, 90) == 0).sum()) == 7
    assert n_removed(50, 5) == 3 and n_removed(10, 8) == 1
    assert ffn_prune_mask(np.array([0.3, -0.1, 0.2, 0.0]), 50).tolist() == [1, 0, 1, 0]
    for bad in (-5, 101, 150):
        with pytest.raises(BackpackError, match="out of range"):
            head_prune_mask(scores, bad)


def test_rank_correlation_is_over_scores_not_sorted_indices():
    """The published script correlated argsort outputs (head indices sorted by score). That pairs unrelated heads:
    its value changes when heads are merely renumbered, and it disagrees with Spearman over the scores."""
    a = np.array([[0.9, 0.1, 0.5], [0.3, 0.7, 0.2]])
    b = np.array([[0.8, 0.2, 0.6], [0.1, 0.9, 0.3]])
    rho = rank_correlation(a, b)
    assert rho == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    sorted_indices = spearmanr(np.argsort(a.ravel()), np.argsort(b.ravel())).statistic
    assert abs(rho - sorted_indices) > 0.1  # the published error gives another number
    perm = np.random.default_rng(0).permutation(a.size)  # renumber the heads the same way in both tasks
    assert rank_correlation(a.ravel()[perm], b.ravel()[perm]) == pytest.approx(rho)
    renumbered = spearmanr(np.argsort(a.ravel()[perm]), np.argsort(b.ravel()[perm])).statistic
    assert renumbered != pytest.approx(sorted_indices)  # ...which is not invariant to head numbering
    assert rank_correlation(a, a) == pytest.approx(1.0) and rank_correlation(a, -a) == pytest.approx(-1.0)
    np.testing.assert_allclose(aggregate_scores([a, b]), (a + b) / 2)
    with pytest.raises(BackpackError):
        aggregate_scores([a, b[:1]])


@pytest.fixture(scope="module")
def char_model():
    """A tiny random GPT-2 over the built-in tasks' characters, and its tokenizer."""
    tokenizer = build_char_tokenizer(icl_corpus(n_prompts=30))
    config = tiny_config("gpt2")
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    return MODEL_CLASSES["gpt2"](config).eval(), tokenizer


def test_curves_grid_and_transfer_on_a_model(char_model, tmp_path):
    model, tok = char_model
    task, other = builtin_task("copy", n=8, seed=1), builtin_task("pairs", n=8, seed=1)
    adapter = adapter_for(model)
    scores = np.random.default_rng(0).random(adapter.shape)
    unmasked = evaluate_task(model, tok, task, k=1, batch_size=32).accuracy
    curve = head_pruning_curve(model, tok, task, scores, (0, 50, 100), k=1, batch_size=32, progress=False)
    assert curve.accuracies[0] == unmasked  # exactly: no hook at 0 %
    assert curve.removed == [0, 4, 8]
    ffn = ffn_importance(model, tok, task, k=1, batch_size=32, progress=False)
    assert ffn.accuracy == unmasked and len(ffn.accuracy_without) == adapter.num_layers
    np.testing.assert_allclose(ffn.scores, unmasked - np.array(ffn.accuracy_without))
    reread = type(ffn).load(ffn.save(tmp_path)["json"])
    assert reread.accuracy_without == ffn.accuracy_without and np.array_equal(reread.scores, ffn.scores)
    fcurve = ffn_pruning_curve(model, tok, task, ffn.scores, (0, 50), k=1, batch_size=32, progress=False)
    assert fcurve.accuracies[0] == unmasked
    grid = pruning_grid(model, tok, task, scores, ffn.scores, (0, 50), (0, 50), k=1, batch_size=32, progress=False)
    assert grid.accuracy[0] == curve.accuracies[:2] and grid.accuracy[1][0] == fcurve.accuracies[1]
    transfer = ranking_transfer(model, tok, {"copy": task, "pairs": other}, {"copy": scores, "pairs": -scores},
                                percent=0, k=1, batch_size=32, progress=False)
    assert transfer.accuracy["pairs"]["copy"] == unmasked and transfer.correlation["copy"]["pairs"] == -1.0
    shots = {"copy": 1, "pairs": 3}  # each task evaluated with its own k
    transfer = ranking_transfer(model, tok, {"copy": task, "pairs": other}, {"copy": scores}, percent=0, k=shots,
                                batch_size=32, progress=False)
    assert transfer.shots == shots and transfer.accuracy["copy"]["copy"] == unmasked
    assert transfer.unpruned["pairs"] == evaluate_task(model, tok, other, k=3, batch_size=32).accuracy
    assert save_curves(tmp_path, [curve, curve], "c")["png"].stat().st_size > 1000
    assert save_grid(tmp_path, grid)["png"].stat().st_size > 1000
