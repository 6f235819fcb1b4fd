"""Prefix-matching probes and scores: the target pattern, the token pool, a planted perfect pattern, capacity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import OPTForCausalLM

from backpacklm.errors import BackpackError
from backpacklm.heads import adapter_for
from backpacklm.heads.induction import (
    _unembed, candidate_tokens, capacity_retained, induction_scores, induction_targets, repeated_loss,
    repeated_sequences,
)

from .models import ARCHS, D, tiny_config, tiny_model


def test_targets_point_after_every_earlier_occurrence():
    t = induction_targets(3, repeats=4)  # BOS a b c a b c a b c a b c
    assert t.shape == (13, 13)
    assert t[:4].sum() == 0  # BOS and the first block have no earlier occurrence
    assert t[4].nonzero()[:, 0].tolist() == [2]  # second "a" -> the "b" after the first "a"
    assert t[10].nonzero()[:, 0].tolist() == [2, 5, 8]  # fourth "a" -> after each earlier "a"
    assert t[6].nonzero()[:, 0].tolist() == [4]  # second "c" -> the second "a" (after the first "c")


def test_probe_tokens_and_sequences():
    counts = np.arange(100)[::-1].copy()  # id 0 most frequent, id 99 least
    pool = candidate_tokens(100, counts, exclude=0.05, skip={50})
    assert pool.min() == 5 and pool.max() == 94 and 50 not in pool and len(pool) == 89
    assert len(candidate_tokens(100, skip={0})) == 99
    seqs = repeated_sequences(pool, 7, n=3, bos_id=99, repeats=4, seed=1)
    assert seqs.shape == (3, 29) and (seqs[:, 0] == 99).all()
    assert all(len(set(row[1:8].tolist())) == 7 for row in seqs)
    assert torch.equal(seqs[:, 1:8].repeat(1, 4), seqs[:, 1:])
    assert torch.equal(seqs, repeated_sequences(pool, 7, n=3, bos_id=99, repeats=4, seed=1))  # seeded
    with pytest.raises(BackpackError):
        repeated_sequences(pool[:5], 7, n=1, bos_id=0)


def test_planted_perfect_pattern_scores_one():
    """Force layer 1's attention to the ideal induction pattern (uniform over the targets): its heads score 1."""
    model = tiny_model("gpt2")
    adapter = adapter_for(model)

    def plant(module, args, out):
        weights = out[1]
        n = weights.shape[-1]
        length = (n - 1) // 4
        ideal = induction_targets(length)
        ideal = torch.where(ideal.sum(-1, keepdim=True) > 0, ideal / ideal.sum(-1, keepdim=True).clamp(min=1),
                            torch.eye(n))
        return out[0], ideal.expand_as(weights)

    hook = adapter.attention(1).register_forward_hook(plant)
    try:
        scores = induction_scores(model, lengths=(5, 9), sequences_per_length=2, progress=False)
    finally:
        hook.remove()
    np.testing.assert_allclose(scores.prefix_matching[1], 1.0, rtol=1e-6)
    assert (scores.prefix_matching[0] < 0.5).all()
    assert model.config._attn_implementation == "sdpa"  # restored after the eager measurement
    assert scores.top_heads(1)[0][0] == 1


@pytest.mark.parametrize("name", ARCHS)
def test_scores_on_every_architecture(name):
    model = tiny_model(name)
    scores = induction_scores(model, lengths=(4, 6), sequences_per_length=2, progress=False)
    assert scores.prefix_matching.shape == adapter_for(model).shape
    assert ((scores.prefix_matching >= 0) & (scores.prefix_matching <= 1 + 1e-6)).all()
    if name == "backpack":
        assert scores.copying is None  # the trunk does not write the logits
    else:
        assert ((scores.copying >= 0) & (scores.copying <= 1 + 1e-6)).all()


def _opt(**overrides):
    torch.manual_seed(0)
    config = tiny_config("opt")
    for key, value in overrides.items():
        setattr(config, key, value)
    return OPTForCausalLM(config).eval()


@pytest.mark.parametrize("name", [a for a in ARCHS if a != "backpack"] + ["opt_projected"])
def test_unembedding_path_reproduces_the_models_logits(name):
    """The copying score's W_U norm(.) is the model's own last step: applied to the residual stream that enters the
    final norm it gives the model's logits (OPT with word_embed_proj_dim < d goes through project_out)."""
    model = _opt(word_embed_proj_dim=D // 2) if name == "opt_projected" else tiny_model(name)
    adapter = adapter_for(model)
    stream = {}
    hook = adapter.to_logits_input()[0].register_forward_pre_hook(lambda module, args: stream.update(x=args[0]))
    with torch.no_grad():
        logits = model(torch.arange(1, 9).view(1, 8)).logits
        hook.remove()
        torch.testing.assert_close(_unembed(model, adapter)(stream["x"]), logits, atol=1e-5, rtol=1e-5)
    if name == "opt_projected":
        scores = induction_scores(model, lengths=(4,), sequences_per_length=2, progress=False)
        assert ((scores.copying >= 0) & (scores.copying <= 1 + 1e-6)).all()


def test_post_layer_norm_opt_has_no_copying_score():
    """OPT-350m's layout (post-LN, no final norm): no direct path from a head to the logits, so copying is None."""
    model = _opt(do_layer_norm_before=False, word_embed_proj_dim=D // 2)
    assert adapter_for(model).to_logits_input() is None
    scores = induction_scores(model, lengths=(4,), sequences_per_length=2, progress=False)
    assert scores.copying is None and scores.prefix_matching.shape == (2, 4)


def test_capacity_retained_and_errors(tmp_path):
    prefix = np.array([[0.0, 0.1], [0.8, 0.1]])
    importance = np.array([[0.1, 0.2], [0.9, 0.3]])
    cap = capacity_retained(prefix, importance, (0, 50, 75))
    assert cap.share == pytest.approx([1.0, 0.9, 0.8])
    with pytest.raises(BackpackError, match="out of range"):
        capacity_retained(prefix, importance, (120,))
    model = tiny_model("gpt2")
    with pytest.raises(BackpackError, match="fits"):
        induction_scores(model, lengths=(40,), progress=False)
    pool = candidate_tokens(64, np.arange(64), exclude=0.3, skip={0})  # ~25 tokens: length 30 cannot be drawn
    fitted = induction_scores(model, lengths=(4, 30), repeats=2, token_counts=np.arange(64), exclude=0.3,
                              sequences_per_length=1, copying=False, progress=False)
    assert len(pool) < 30 and fitted.lengths == [4]  # skipped like a length that exceeds the positions
    ids = repeated_sequences(np.arange(1, 60), 5, 2, bos_id=0)
    assert repeated_loss(model, ids, 5) > 0
    paths = induction_scores(model, lengths=(4,), sequences_per_length=1, progress=False).save(tmp_path)
    assert paths["prefix_png"].stat().st_size > 1000 and paths["copying_png"].is_file()
