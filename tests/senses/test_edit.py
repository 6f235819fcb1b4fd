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


def test_a_text_opening_with_the_word_is_edited_too():
    """"king" opening a text is another token than " king": both carry the edit, so the prediction after a prompt
    that starts with the word changes as after " king" (before, that prompt was left unedited)."""
    from backpacklm.data.tokenizers import build_word_tokenizer
    from backpacklm.senses.edit import measure_edit

    tokenizer = build_word_tokenizer(["king loves the crown .", "the king fears the sea ."])
    torch.manual_seed(0)
    model = BackpackForCausalLM(BackpackConfig(vocab_size=len(tokenizer), n_positions=16, n_embd=32, n_layer=1,
                                               n_head=2, num_senses=2)).eval()
    edit = SenseEdit("king", "crown", "sea")
    bare, spaced = tokenizer.convert_tokens_to_ids(["king", "Ġking"])
    overrides = edit_overrides(model, tokenizer, [edit])
    assert set(overrides) == {bare, spaced}
    E = model.get_input_embeddings().weight
    with torch.no_grad():
        expected = replace_sense_direction(model.token_senses(torch.tensor([bare]))[0], E[tokenizer.encode(" crown")[0]],
                                           E[tokenizer.encode(" sea")[0]])
    torch.testing.assert_close(overrides[bare], expected, atol=0, rtol=0)
    for effect in measure_edit(model, tokenizer, edit, ["king", "the king"]).prompts:
        assert (effect.p_source_after, effect.p_target_after) != (effect.p_source_before, effect.p_target_before)


def test_an_edits_file_with_a_field_that_is_not_a_word_is_refused(tmp_path):
    """`"word": null` used to become an edit of the word "None"."""
    import pytest

    from backpacklm.errors import BackpackError
    from backpacklm.senses.edit import load_edits

    for value in ("null", "3", '["phone"]'):
        path = tmp_path / "edits.json"
        path.write_text('{"edits": [{"word": %s, "from": "acme", "to": "globex"}]}' % value)
        with pytest.raises(BackpackError, match=r"not an edits file .*'word' must be a word"):
            load_edits(path)
    path.write_text('{"edits": [{"word": "phone", "from": "acme", "to": "globex"}]}')
    assert load_edits(path) == [SenseEdit("phone", "acme", "globex")]
