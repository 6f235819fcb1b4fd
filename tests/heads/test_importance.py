"""Head importance: eq. 8-9 against a direct per-head computation, both methods, one backward, no parameter grads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backpacklm.errors import BackpackError
from backpacklm.heads import adapter_for
from backpacklm.heads.importance import HeadImportance, answer_nll, importance_from_batches

from .models import ARCHS, tiny_model


def batch(seed=0, n=3, pos=10, pad=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, pos), generator=g)
    mask = torch.ones_like(ids)
    mask[0, pos - pad:] = 0  # a right-padded row
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, pos - pad - 3:pos - pad] = True
    answer[1:, pos - 3:] = True
    return ids, mask, answer


def reference_scores(model, batches, method):
    """Per-head finite-difference-free reference: for each example separately, the gradient of its answer loss
    w.r.t. a per-token gate of one head, computed with its own backward (n_heads backwards per example)."""
    adapter = adapter_for(model)
    L, H = adapter.shape
    total = torch.zeros(L, H, dtype=torch.float64)
    tokens = examples = 0
    for ids, mask, answer in batches:
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            x, m, a = ids[b:b + 1, :n], mask[b:b + 1, :n], answer[b:b + 1, :n]
            for layer in range(L):
                gate = torch.ones(1, n, H, requires_grad=True)  # [batch, pos, head] at this layer only
                hook = adapter.attn_out(layer).register_forward_pre_hook(
                    lambda mod, args: (args[0] * gate.repeat_interleave(adapter.head_dim, -1),))
                try:
                    loss = answer_nll(model(input_ids=x, attention_mask=m).logits, x, a).sum()
                    (grad,) = torch.autograd.grad(loss, gate)
                finally:
                    hook.remove()
                total[layer] += grad[0].abs().sum(0) if method == "token" else grad[0].sum(0).abs()
            tokens += n
            examples += 1
    return (total / (tokens if method == "token" else examples)).numpy()


@pytest.mark.parametrize("method", ["token", "gate"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_importance_matches_per_example_reference(name, method):
    model = tiny_model(name)
    batches = [batch(0), batch(1)]
    result = importance_from_batches(model, batches, method=method, progress=False)
    expected = reference_scores(model, batches, method)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-9)
    assert result.tokens == sum(int(m.sum()) for _, m, _ in batches) and result.examples == 6
    assert (result.scores > 0).all()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_token_score_is_at_least_gate_score_per_example():
    """|sum_t x_t| <= sum_t |x_t|: with equal normalisers (one example, all tokens) token >= gate."""
    model = tiny_model("opt")
    ids, mask, answer = batch(2, n=1, pad=0)
    token = importance_from_batches(model, [(ids, mask, answer)], "token", progress=False).scores
    gate = importance_from_batches(model, [(ids, mask, answer)], "gate", progress=False).scores
    n = int(mask.sum())
    assert (token * n >= gate - 1e-12).all() and (token * n > gate + 1e-9).any()


@pytest.mark.parametrize("name", ARCHS)
def test_every_architecture_and_layer_normalisation(name):
    model = tiny_model(name)
    result = importance_from_batches(model, [batch(3)], normalize="layer", progress=False)
    assert result.scores.shape == adapter_for(model).shape
    np.testing.assert_allclose(np.linalg.norm(result.scores, axis=1), 1.0, rtol=1e-6)


def test_masked_heads_get_zero_importance_and_batching_does_not_matter():
    model = tiny_model("gpt2")
    adapter = adapter_for(model)
    ids, mask, answer = batch(4, n=4)
    whole = importance_from_batches(model, [(ids, mask, answer)], progress=False).scores
    split = importance_from_batches(model, [(ids[:1], mask[:1], answer[:1]), (ids[1:], mask[1:], answer[1:])],
                                    progress=False).scores
    np.testing.assert_allclose(whole, split, rtol=1e-5)
    head_mask = torch.ones(adapter.shape)
    head_mask[0, 1] = 0
    masked = importance_from_batches(model, [(ids, mask, answer)], head_mask=head_mask, progress=False).scores
    assert masked[0, 1] == 0 and masked[1].sum() > 0
    assert not adapter.attn_out(0)._forward_pre_hooks  # everything removed


def test_no_answer_tokens_is_an_error():
    ids, mask, answer = batch()
    with pytest.raises(BackpackError, match="no answer tokens"):  # was: scores of all zeros
        importance_from_batches(tiny_model("gpt2"), [(ids, mask, torch.zeros_like(answer))], progress=False)


def test_save_and_load_roundtrip(tmp_path):
    imp = HeadImportance(scores=np.arange(8.0).reshape(2, 4), task="t")
    paths = imp.save(tmp_path)
    assert paths["png"].stat().st_size > 1000
    assert imp.ranking()[0] == (1, 3)
    for key in ("json", "npy"):
        np.testing.assert_array_equal(HeadImportance.load(paths[key]).scores, imp.scores)
    for text in ("{}", "[1, 2, 3]", "null", '"scores"'):  # valid JSON, but no object with "scores"
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(BackpackError, match=r"bad\.json: not a valid importance file \(expected a JSON object"):
            HeadImportance.load(tmp_path / "bad.json")
    with pytest.raises(BackpackError, match="method"):
        importance_from_batches(tiny_model("gpt2"), [batch()], method="magic")


def test_load_refuses_what_is_not_a_file_of_real_scores(tmp_path):
    """A missing file, a folder, a FIFO (which would block the read) and complex or text .npy scores (numpy cut the
    imaginary part with a warning) are each a one-line error."""
    import os

    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    os.mkfifo(tmp_path / "fifo.json")
    np.save(tmp_path / "complex.npy", np.ones((2, 4)) * 1j)
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    cases = {"missing.json": "cannot read the importance file (No such file or directory)",
             "loop.json": "cannot read the importance file (Too many levels of symbolic links)",
             ".": "cannot read the importance file (not a regular file)",
             "fifo.json": "cannot read the importance file (not a regular file)",
             "complex.npy": "not a valid importance file (scores must be real numbers, not complex128)",
             "text.npy": "not a valid importance file (scores must be real numbers, not <U1)"}
    for name, message in cases.items():
        with pytest.raises(BackpackError) as err:
            HeadImportance.load(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}: {message}"
