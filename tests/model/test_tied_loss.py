"""The chunked tied cross-entropy equals the plain one (loss and gradients), in the model and on its own."""

import pytest
import torch
import torch.nn.functional as F

from backpacklm import BackpackError
from backpacklm.model.tied_loss import tied_cross_entropy
from tests.model.test_backpack import small_model


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_loss_and_gradients_equal_the_plain_cross_entropy(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(60, 16, generator=g, requires_grad=True)
    weight = torch.randn(37, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 37, (60,), generator=g)
    targets[::4] = -100
    plain = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)
    (2.5 * plain).backward()
    expected = plain.detach(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    chunked = tied_cross_entropy(hidden, weight, targets, chunk)
    (2.5 * chunked).backward()  # the incoming gradient scales the stored ones
    assert torch.allclose(chunked.detach(), expected[0], atol=1e-6, rtol=0)
    assert torch.allclose(hidden.grad, expected[1], atol=1e-6, rtol=0)
    assert torch.allclose(weight.grad, expected[2], atol=1e-6, rtol=0)
    with torch.no_grad():  # the loss-only path (evaluation) gives the same value
        assert torch.allclose(tied_cross_entropy(hidden, weight, targets, chunk), expected[0], atol=1e-6, rtol=0)


def test_all_targets_ignored_gives_zero_loss_and_gradient():
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    loss = tied_cross_entropy(hidden, weight, torch.full((5,), -100), chunk=2)
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().max().item() == 0.0 and weight.grad.abs().max().item() == 0.0


def test_backpack_loss_without_logits_equals_the_full_forward():
    model = small_model(seed=3).train()
    ids = torch.randint(0, model.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100
    full = model(ids, labels=labels, use_cache=False)
    full.loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    lean = model(ids, labels=labels, use_cache=False, return_logits=False)
    lean.loss.backward()
    assert lean.logits is None
    assert abs(lean.loss.item() - full.loss.item()) < 1e-6
    worst = max((p.grad - expected[name]).abs().max().item() for name, p in model.named_parameters())
    assert worst < 1e-6, worst
    with pytest.raises(BackpackError, match="needs labels"):
        model(ids, use_cache=False, return_logits=False)


@pytest.mark.parametrize("arch", ["backpack", "transformer"])
def test_lean_loss_module_equals_the_models_own_loss(arch):
    """What the trainer calls (lean_loss) gives the model's own loss and gradients, for both architectures; a GPT-2
    whose head is not the tied embedding is left as it is."""
    from backpacklm.model.tied_loss import LeanLoss, lean_loss
    from backpacklm.model.transformer import build_model

    torch.manual_seed(0)
    model = build_model(small_model().config, arch).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[1, :4] = -100
    own = model(input_ids=ids, labels=labels, use_cache=False).loss
    own.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    wrapped = lean_loss(model)
    assert isinstance(wrapped, LeanLoss) and list(wrapped.parameters()) == list(model.parameters())
    lean = wrapped(input_ids=ids, labels=labels)
    lean.loss.backward()
    assert abs(lean.loss.item() - own.item()) < 1e-6
    assert max((p.grad - expected[n]).abs().max().item() for n, p in model.named_parameters()) < 1e-6
    if arch == "transformer":
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        assert lean_loss(model) is model
