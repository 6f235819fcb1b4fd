"""The adapter table: shapes, module paths, value vectors and the OV path of every supported architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from backpacklm.errors import BackpackError
from backpacklm.heads import adapter_for
from backpacklm.heads.adapters import parse_heads, parse_layers

from .models import ARCHS, HEADS, LAYERS, D, tiny_model


@pytest.mark.parametrize("name", ARCHS)
def test_shapes_and_values(name, ids):
    model = tiny_model(name, "eager")
    adapter = adapter_for(model)
    assert adapter.shape == (LAYERS, HEADS) and adapter.head_dim == D // HEADS
    seen = {}
    hooks = [adapter.value_module(1).register_forward_hook(lambda m, a, o: seen.update(v=o)),
             adapter.attn_out(1).register_forward_pre_hook(lambda m, a: seen.update(z=a[0])),
             adapter.attention(1).register_forward_hook(lambda m, a, o: seen.update(w=o[1]))]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    values = adapter.values(seen["v"])  # [batch, pos, head, d_head]
    weights = seen["w"]  # [batch, head, q, k]
    assert values.shape == (*ids.shape, HEADS, D // HEADS)
    # the input of the output projection is, per head, the attention-weighted sum of that head's values
    mixed = torch.einsum("bhqk,bkhd->bqhd", weights, values).flatten(-2)
    torch.testing.assert_close(mixed, seen["z"], atol=1e-5, rtol=1e-4)
    # the OV path: head_output of head-wise vectors sums to the projection of their concatenation (minus bias)
    proj = adapter.attn_out(1)
    per_head = adapter.head_output(1, values[0])  # [pos, head, d_model]
    zero_bias = proj(torch.zeros(1, D))[0]
    torch.testing.assert_close(per_head.sum(-2), proj(values[0].flatten(-2)) - zero_bias, atol=1e-5, rtol=1e-4)


def test_unsupported_architecture():
    model = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=32, d_kv=8))
    with pytest.raises(BackpackError, match="architecture 't5'.*not supported"):
        adapter_for(model)


def test_parse_heads_and_layers():
    adapter = adapter_for(tiny_model("gpt2"))
    assert parse_heads("0.1, 1.3", adapter) == [(0, 1), (1, 3)]
    assert parse_layers("1", adapter) == [1]
    for bad in ("2.0", "0.4", "x", "0.-1"):
        with pytest.raises(BackpackError):
            parse_heads(bad, adapter)
    with pytest.raises(BackpackError, match="out of range"):
        parse_layers("2", adapter)
