"""Head gates = zeroing the head's value vectors, for every architecture, eager and sdpa; gate gradients."""

from __future__ import annotations

import pytest
import torch

from backpacklm.errors import BackpackError
from backpacklm.heads import adapter_for, frozen_parameters, masking, probing
from backpacklm.heads.gates import ffn_mask_without, head_mask_without

from .models import ARCHS, HEADS, tiny_config, tiny_model

LAYER, HEAD = 1, 2


def mha_twin(model, attn):
    """The same grouped-query model written with one kv head per query head (k/v projections repeated)."""
    config = tiny_config(model.config.model_type)
    config.num_key_value_heads = config.num_attention_heads
    twin = type(model)(config)
    twin.set_attn_implementation(attn)
    rep = config.num_attention_heads // model.config.num_key_value_heads
    state = model.state_dict()
    for name, tensor in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            dh = model.config.hidden_size // model.config.num_attention_heads
            state[name] = tensor.unflatten(0, (-1, dh)).repeat_interleave(rep, dim=0).flatten(0, 1)
    twin.load_state_dict(state)
    return twin.eval()


def logits_with_zero_values(model, ids, layer, head):
    """Reference: zero head `head`'s value vectors in `layer` at the value projection's output."""
    adapter = adapter_for(model)
    dh, D = adapter.head_dim, adapter.num_heads * adapter.head_dim
    layout = adapter.spec.value_layout

    def zero(module, args, out):
        out = out.clone()
        if layout == "gpt2_qkv":
            out[..., 2 * D + head * dh: 2 * D + (head + 1) * dh] = 0
        elif layout == "neox_qkv":
            out[..., head * 3 * dh + 2 * dh: (head + 1) * 3 * dh] = 0
        else:
            out[..., head * dh: (head + 1) * dh] = 0
        return out

    handle = adapter.value_module(layer).register_forward_hook(zero)
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ARCHS)
def test_gate_equals_zeroed_values(name, attn, ids):
    model = tiny_model(name, attn)
    adapter = adapter_for(model)
    with torch.no_grad():
        base = model(ids).logits
        with masking(model, head_mask_without(adapter, [(LAYER, HEAD)])):
            gated = model(ids).logits
        after = model(ids).logits
    assert torch.equal(after, base)  # hooks removed on exit
    scale = base.abs().max()  # the Backpack's initial logits are tiny
    effect = (gated - base).abs().max()
    assert effect > 1e-4 * scale  # the gate does something
    reference = model
    if adapter.num_kv_heads != adapter.num_heads:  # grouped-query: compare with the equivalent one-kv-per-head model
        reference = mha_twin(model, attn)
        with torch.no_grad():
            torch.testing.assert_close(reference(ids).logits, base, atol=1e-5 * scale, rtol=1e-5)
    zeroed = logits_with_zero_values(reference, ids, LAYER, HEAD)
    assert (gated - zeroed).abs().max() < 1e-3 * effect


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_gqa_group_gate_equals_zeroed_kv_head(name, ids):
    """Gating every query head that shares kv head 0 = zeroing kv head 0's values in the real GQA model."""
    model = tiny_model(name, "sdpa")
    adapter = adapter_for(model)
    group = HEADS // adapter.num_kv_heads
    with torch.no_grad(), masking(model, head_mask_without(adapter, [(LAYER, h) for h in range(group)])):
        gated = model(ids).logits
    torch.testing.assert_close(gated, logits_with_zero_values(model, ids, LAYER, 0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_ffn_knockout_equals_zeroed_ffn(name, ids):
    model = tiny_model(name)
    adapter = adapter_for(model)
    with torch.no_grad(), masking(model, ffn_mask=ffn_mask_without(adapter, [0])):
        gated = model(ids).logits
    reference = tiny_model(name)
    for p in adapter_for(reference).ffn_out(0).parameters():  # every FFN weight and bias 0 -> the block outputs 0
        p.data.zero_()
    with torch.no_grad():
        torch.testing.assert_close(gated, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_fractional_gates_scale_linearly(ids):
    """Head outputs enter the output projection linearly: gate 0.5 is the mean of gates 0 and 1 at that input."""
    model = tiny_model("gpt2")
    adapter = adapter_for(model)
    inputs = {}
    hook = adapter.attn_out(1).register_forward_hook(lambda m, a, o: inputs.update({len(inputs): a[0]}))
    try:
        with torch.no_grad():
            for g in (0.0, 0.5, 1.0):
                mask = torch.ones(adapter.shape)
                mask[1, 2] = g
                with masking(model, mask):
                    model(ids)
    finally:
        hook.remove()
    torch.testing.assert_close(inputs[1], (inputs[0] + inputs[2]) / 2)


def test_gate_gradient_is_summed_token_scores(ids):
    """dL/dg[l, h] = sum over tokens of a·dL/da (eq. 8 before the absolute value), three ways from one backward."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    gate = torch.ones(adapter.shape, requires_grad=True)
    captured = {}

    def keep(layer):
        def hook(module, args):
            args[0].retain_grad()
            captured[layer] = args[0]
        return hook

    with frozen_parameters(model), masking(model, gate), probing(model) as probe:
        handles = [adapter.attn_out(l).register_forward_pre_hook(keep(l)) for l in range(adapter.num_layers)]
        loss = model(ids, labels=ids).loss
        loss.backward()
        for h in handles:
            h.remove()
        per_token = probe.token_scores()  # [layer, batch, pos, head]
    manual = torch.stack([(captured[l] * captured[l].grad).unflatten(-1, (HEADS, -1)).sum(-1).sum((0, 1))
                          for l in range(adapter.num_layers)])
    torch.testing.assert_close(gate.grad, per_token.sum((1, 2)), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(gate.grad, manual, atol=1e-6, rtol=1e-4)
    assert gate.grad.abs().min() > 0
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient allocated
    assert all(p.requires_grad for p in model.parameters())  # restored on exit


def test_bad_masks(ids):
    model = tiny_model("gpt2")
    adapter = adapter_for(model)
    with pytest.raises(BackpackError, match="shape"):
        with masking(model, torch.ones(3, 4)):
            pass
    with pytest.raises(BackpackError, match="shape"):
        with masking(model, ffn_mask=torch.ones(5)):
            pass
    with pytest.raises(BackpackError, match="out of range"):
        head_mask_without(adapter, [(0, HEADS)])
    with pytest.raises(BackpackError, match="out of range"):
        ffn_mask_without(adapter, [7])
    assert not adapter.attn_out(0)._forward_pre_hooks
