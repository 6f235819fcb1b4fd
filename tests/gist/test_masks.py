"""Who may attend to whom, per condition: the mask itself, and what eager and sdpa attention actually do with it in
HF GPT-2, a tiny Llama and our Backpack (trunk and sense-weight attention)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from backpacklm.errors import BackpackError
from backpacklm.gist.masks import allowed_attention, gist_attention_mask, padded_position_ids
from backpacklm.model.config import BackpackConfig
from backpacklm.model.modeling_backpack import BackpackForCausalLM

G, PAD = 9, 0  # gist id, padding id
# row 0: I I G G T T (no padding); row 1: P P I G T T (left-padded, one gist)
IDS = torch.tensor([[3, 4, G, G, 5, 6], [PAD, PAD, 3, G, 5, 6]])
PADDING = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)

# EXPECTED[condition][row][query] = the keys that query may see (padding queries see only themselves)
EXPECTED = {
    "gist": [
        [{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {2, 3, 4}, {2, 3, 4, 5}],
        [{0}, {1}, {2}, {2, 3}, {3, 4}, {3, 4, 5}],
    ],
    "pos_control": [
        [{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}, {0, 1, 2, 3, 4, 5}],
        [{0}, {1}, {2}, {2, 3}, {2, 3, 4}, {2, 3, 4, 5}],
    ],
    "neg_control": [
        [{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {4}, {4, 5}],
        [{0}, {1}, {2}, {2, 3}, {4}, {4, 5}],
    ],
}
REAL_QUERIES = [(row, q) for row in range(2) for q in range(6) if PADDING[row, q]]


def as_sets(allowed: torch.Tensor) -> list[list[set[int]]]:
    """[batch, 1, q, k] bool -> per row, per query, the set of visible keys."""
    return [[set(torch.nonzero(allowed[b, 0, q]).flatten().tolist()) for q in range(allowed.shape[2])]
            for b in range(allowed.shape[0])]


@pytest.mark.parametrize("condition", list(EXPECTED))
def test_mask_enumerates_expected_visibility(condition):
    assert as_sets(allowed_attention(IDS, G, condition, PADDING)) == EXPECTED[condition]
    additive = gist_attention_mask(IDS, G, condition, PADDING)
    assert additive.shape == (2, 1, 6, 6) and additive.dtype == torch.float32
    assert set(additive.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    assert as_sets(additive == 0) == EXPECTED[condition]


def test_rows_without_gists_are_causal_and_positions_skip_padding():
    ids = torch.tensor([[1, 2, 3]])
    for condition in EXPECTED:
        assert as_sets(allowed_attention(ids, G, condition)) == [[{0}, {0, 1}, {0, 1, 2}]]
    assert padded_position_ids(PADDING).tolist() == [[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]]
    assert padded_position_ids(PADDING[1:], start=torch.tensor([7])).tolist() == [[7, 7, 7, 8, 9, 10]]
    with pytest.raises(BackpackError, match="unknown gist condition"):
        allowed_attention(ids, G, "gisty")


def _gpt2(attn: str, layers: int = 2):
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=layers, n_head=2, vocab_size=12, n_positions=16, bos_token_id=0,
                        eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    config._attn_implementation = attn
    return GPT2LMHeadModel(config).eval()


def _llama(attn: str, layers: int = 2):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=12, max_position_embeddings=32, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


def _backpack(attn: str, layers: int = 2):
    torch.manual_seed(0)
    config = BackpackConfig.from_preset("tiny", n_embd=32, n_layer=layers, n_head=2, num_senses=2, vocab_size=12,
                                        n_positions=16)
    config._attn_implementation = attn
    return BackpackForCausalLM(config).eval()


def _visible_from_weights(weights: torch.Tensor) -> list[list[set[int]]]:
    """[batch, heads, q, k] attention probabilities -> keys with non-zero weight in any head."""
    return as_sets((weights > 0).any(dim=1, keepdim=True))


def _expected_real(condition):
    return {(b, q): EXPECTED[condition][b][q] for b, q in REAL_QUERIES}


@pytest.mark.parametrize("condition", list(EXPECTED))
@pytest.mark.parametrize("family", ["gpt2", "llama", "backpack"])
def test_eager_attention_weights_follow_the_mask(family, condition):
    """Eager attention probabilities are exactly zero where the mask forbids and positive where it allows."""
    model = {"gpt2": _gpt2, "llama": _llama, "backpack": _backpack}[family]("eager")
    trunk = model.transformer if family == "backpack" else model
    mask = gist_attention_mask(IDS, G, condition, PADDING)
    out = trunk(input_ids=IDS, attention_mask=mask, position_ids=padded_position_ids(PADDING), output_attentions=True)
    for layer_weights in out.attentions:
        seen = _visible_from_weights(layer_weights)
        assert {(b, q): seen[b][q] for b, q in REAL_QUERIES} == _expected_real(condition)
    if family == "backpack":  # the sense-weight attention (materialized alpha) follows the same rule
        alpha = model(input_ids=IDS, attention_mask=mask, position_ids=padded_position_ids(PADDING),
                      output_contextualization=True).contextualization
        seen = _visible_from_weights(alpha)
        assert {(b, q): seen[b][q] for b, q in REAL_QUERIES} == _expected_real(condition)


def _direct_dependencies(forward, n: int) -> dict[tuple[int, int], set[int]]:
    """For a one-layer model, key j is visible to query i iff perturbing position j changes output i."""
    base = forward(None)
    seen = {(b, q): set() for b, q in REAL_QUERIES}
    for j in range(n):
        changed = (forward(j) - base).abs().amax(dim=-1) > 1e-6  # [batch, pos]
        for b, q in REAL_QUERIES:
            if changed[b, q] and PADDING[b, j]:
                seen[(b, q)].add(j)
    return seen


@pytest.mark.parametrize("condition", list(EXPECTED))
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sdpa_attention_follows_the_mask(family, condition):
    """sdpa gives no weights: with one layer, output i depends on token j exactly when i may attend to j."""
    model = {"gpt2": _gpt2, "llama": _llama}[family]("sdpa", layers=1)
    mask = gist_attention_mask(IDS, G, condition, PADDING)
    positions = padded_position_ids(PADDING)

    @torch.no_grad()
    def forward(j):
        ids = IDS.clone()
        if j is not None:
            ids[:, j] = 10 + (ids[:, j] == 10).long() - (ids[:, j] == 11).long()  # another real token
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits

    assert _direct_dependencies(forward, IDS.shape[1]) == _expected_real(condition)
    eager = {"gpt2": _gpt2, "llama": _llama}[family]("eager", layers=1)
    with torch.no_grad():
        same = eager(input_ids=IDS, attention_mask=mask, position_ids=positions).logits
    real = PADDING.unsqueeze(-1)
    assert torch.allclose(forward(None) * real, same * real, atol=1e-5)


@pytest.mark.parametrize("condition", list(EXPECTED))
def test_backpack_sdpa_sense_attention_follows_the_mask(condition):
    """Scaling one key's senses (sense_multipliers, which leave the trunk untouched) changes exactly the outputs of
    the queries allowed to see that key, in the fused (sdpa) sense mixing; both paths give the same logits."""
    model = _backpack("sdpa")
    mask = gist_attention_mask(IDS, G, condition, PADDING)
    positions = padded_position_ids(PADDING)

    @torch.no_grad()
    def forward(j):
        multipliers = torch.ones(2, 6, 2)
        if j is not None:
            multipliers[:, j] = 3.0
        return model(input_ids=IDS, attention_mask=mask, position_ids=positions, sense_multipliers=multipliers).logits

    assert _direct_dependencies(forward, 6) == _expected_real(condition)
    with torch.no_grad():
        materialized = model(input_ids=IDS, attention_mask=mask, position_ids=positions,
                             output_contextualization=True).logits
    real = PADDING.unsqueeze(-1)
    assert torch.allclose(forward(None) * real, materialized * real, atol=1e-5)
