"""Knowledge edits by sense replacement: the formula, applied once per distinct token of the edited word."""

from __future__ import annotations

import torch

from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.model.config import BackpackConfig
from backpacklm.model.modeling_backpack import BackpackForCausalLM
from backpacklm.senses.edit import SenseEdit, edit_overrides, replace_sense_direction


def test_replace_sense_direction_moves_the_source_component_to_the_target():
    torch.manual_seed(0)
    senses, e_a, e_b = torch.randn(4, 16, dtype=torch.float64), torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    edited = replace_sense_direction(senses, e_a, e_b)
    t = senses @ e_a / e_a.dot(e_a)
    # what was t * e_a is now t * |e_a|^2 / |e_b|^2 * e_b: the rest of each sense is untouched
    torch.testing.assert_close(edited - (t * e_a.dot(e_a) / e_b.dot(e_b)).unsqueeze(1) * e_b,
                               senses - t.unsqueeze(1) * e_a)


def test_a_token_the_word_repeats_is_edited_once():
    """Char-level "book" is b, o, o, k: "o" gets the formula once, like "b", not twice."""
    tokenizer = build_char_tokenizer("the book and a zebra")
    torch.manual_seed(0)
    model = BackpackForCausalLM(BackpackConfig(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=1,
                                               n_head=2, num_senses=2)).eval()
    E = model.get_input_embeddings().weight
    ids = {c: tokenizer.convert_tokens_to_ids(c) for c in "bokaz"}
    overrides = edit_overrides(model, tokenizer, [SenseEdit("book", "a", "z")])
    assert set(overrides) == {ids["b"], ids["o"], ids["k"]}
    with torch.no_grad():
        for char in "bok":
            once = replace_sense_direction(model.token_senses(torch.tensor([ids[char]]))[0], E[ids["a"]], E[ids["z"]])
            torch.testing.assert_close(overrides[ids[char]], once, atol=0, rtol=0)
