"""The gist layout: token, embedding rows, prompt text, labels; char-level, BPE and Hugging Face tokenizers;
Alpaca loading and left-padded batches."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from backpacklm.data.tokenizers import build_char_tokenizer, train_bpe_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.gist.data import collate, load_examples
from backpacklm.gist.layout import (
    GIST_TOKEN, IGNORE, GistExample, add_gist_token, decode_completion, encode_example, encode_instruction, encode_tail,
)
from backpacklm.model.config import BackpackConfig
from backpacklm.model.transformer import build_model

TEXT = "Instruction: Input: Output: reverse the letters a b c sort x y z count 2 3\n"
EXAMPLE = GistExample("reverse the letters", "a b c", "c b a")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_layout_text_ids_and_labels(kind):
    tokenizer = build_char_tokenizer(TEXT) if kind == "char" else train_bpe_tokenizer([TEXT * 5], 300)
    gist_id = add_gist_token(tokenizer)
    assert add_gist_token(tokenizer) == gist_id  # idempotent
    encoded = encode_example(tokenizer, EXAMPLE, num_gists=3)
    ids = encoded.input_ids
    assert ids[encoded.n_instruction:encoded.gist_end] == [gist_id] * 3 and ids.count(gist_id) == 3
    assert tokenizer.decode(ids) == ("Instruction: reverse the letters\n" + GIST_TOKEN * 3 +
                                     "\nInput: a b c\nOutput: c b a<|endoftext|>")
    # loss on the completion (and end-of-text) only
    completion = [t for t in encoded.labels if t != IGNORE]
    assert encoded.labels[:encoded.n_prompt] == [IGNORE] * encoded.n_prompt
    assert completion == ids[encoded.n_prompt:] and completion[-1] == tokenizer.eos_token_id
    assert decode_completion(tokenizer, completion) == "c b a"
    # the prompt is instruction+gists, then the tail, exactly as compress/generate see it
    assert encode_instruction(tokenizer, EXAMPLE.instruction, 3) + encode_tail(tokenizer, EXAMPLE) == ids[:encoded.n_prompt]
    no_input = encode_example(tokenizer, GistExample("count", "", "3"), num_gists=1)
    assert tokenizer.decode(no_input.input_ids) == f"Instruction: count\n{GIST_TOKEN}\nOutput: 3<|endoftext|>"


@pytest.mark.parametrize("field", ["instruction", "input", "output"])
def test_gist_string_in_user_text_is_rejected(field):
    """A literal "<GIST>" in the data would be encoded as one more gist token (moving the last gist): an error."""
    tokenizer = build_char_tokenizer(TEXT)
    add_gist_token(tokenizer)
    example = GistExample(**{"instruction": "sort", "input": "b a", "output": "a b", field: f"x {GIST_TOKEN} y"})
    with pytest.raises(BackpackError, match=f"^{field} 'x <GIST> y' contains <GIST>, which is reserved"):
        encode_example(tokenizer, example, num_gists=2)
    if field == "instruction":
        with pytest.raises(BackpackError, match="instruction 'x <GIST> y' contains <GIST>"):
            encode_instruction(tokenizer, example.instruction, 2)
    if field == "input":
        with pytest.raises(BackpackError, match="input 'x <GIST> y' contains <GIST>"):
            encode_tail(tokenizer, example)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_end_of_text_string_in_user_text_is_plain_text(kind):
    """A literal "<|endoftext|>" inside an example is data: its characters, never the end-of-text token (which
    would end the document in the middle of the prompt); the only end-of-text is the one closing the output."""
    text = TEXT + "<|endoftext|>"
    tokenizer = build_char_tokenizer(text) if kind == "char" else train_bpe_tokenizer([text] * 20, 300)
    add_gist_token(tokenizer)
    eos = tokenizer.eos_token_id
    example = GistExample("sort <|endoftext|> x", "b <|endoftext|> a", "a <|endoftext|> b")
    encoded = encode_example(tokenizer, example, num_gists=1)
    assert encoded.input_ids.count(eos) == 1 and encoded.input_ids[-1] == eos
    assert tokenizer.decode(encoded.input_ids[:-1]) == ("Instruction: sort <|endoftext|> x\n<GIST>\nInput: b <|endoftext|> a"
                                                         "\nOutput: a <|endoftext|> b")
    assert eos not in encode_instruction(tokenizer, example.instruction, 1) + encode_tail(tokenizer, example)


def test_new_rows_are_the_mean_for_tied_and_untied_models():
    tokenizer = build_char_tokenizer(TEXT)
    backpack = build_model(BackpackConfig.from_preset("tiny", n_embd=32, n_layer=1, n_head=2, num_senses=2,
                                                      vocab_size=len(tokenizer), n_positions=64), "backpack")
    old = backpack.get_input_embeddings().weight.detach().clone()
    gist_id = add_gist_token(tokenizer, backpack)
    weight = backpack.get_input_embeddings().weight
    assert gist_id == len(tokenizer) - 1 == weight.shape[0] - 1 == backpack.config.vocab_size - 1
    assert torch.equal(weight[:-1], old) and torch.allclose(weight[gist_id], old.mean(0))
    ids = torch.tensor([[0, gist_id]])
    assert backpack(input_ids=ids).logits.shape == (1, 2, len(tokenizer))

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=40, tie_word_embeddings=False))
    head = llama.lm_head.weight.detach().clone()
    tokenizer = build_char_tokenizer(TEXT)  # fewer ids than the model's 40 rows: a spare row is reused
    gist_id = add_gist_token(tokenizer, llama)
    assert gist_id < 40 and llama.lm_head.weight.shape[0] == 40
    assert torch.allclose(llama.lm_head.weight[gist_id], head[:gist_id].mean(0))
    assert torch.allclose(llama.get_input_embeddings().weight[gist_id],
                          llama.get_input_embeddings().weight[:gist_id].mean(0))


def test_alpaca_loading_errors_and_left_padded_batches(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"instruction": "sort", "input": "b a", "output": "a b"},
                                {"instruction": "count the letters", "output": "2"}]))
    examples = load_examples(good)
    assert examples[1] == GistExample("count the letters", "", "2")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + good.read_bytes())  # saved by a Windows editor
    assert load_examples(tmp_path / "bom.json") == examples
    for content, message in [
        ([{"input": "x", "output": "y"}], "record 0 has no string field 'instruction'"),
        ([{"instruction": "sort"}], "record 0 has no string field 'output'"),
        ({"not": "a list"}, "record 0 has no string field"),
        ([], "non-empty JSON list"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(BackpackError, match=message):
            load_examples(bad)
    reserved = tmp_path / "reserved.json"  # the literal string would be read as a gist token
    reserved.write_text(json.dumps([{"instruction": "sort", "input": "b a", "output": "a b"},
                                    {"instruction": "sort", "input": "b <GIST> a", "output": "a b"}]))
    with pytest.raises(BackpackError, match="record 1's 'input' contains <GIST>, which is reserved"):
        load_examples(reserved, require_output=False)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(BackpackError, match="neither a JSON list nor JSON Lines"):
        load_examples(tmp_path / "broken.json")

    tokenizer = build_char_tokenizer(TEXT)
    gist_id = add_gist_token(tokenizer)
    encoded = [encode_example(tokenizer, e, 2) for e in examples]
    batch = collate(encoded, tokenizer.eos_token_id, gist_id, "gist")
    width = max(len(e.input_ids) for e in encoded)
    assert batch.input_ids.shape == batch.labels.shape == batch.position_ids.shape == (2, width)
    assert batch.attention_mask.shape == (2, 1, width, width)
    short = 0 if len(encoded[0].input_ids) < width else 1
    n_pad = width - len(encoded[short].input_ids)
    assert not batch.padding_mask[short, :n_pad].any() and batch.padding_mask[short, n_pad:].all()
    assert (batch.labels[short, :n_pad] == IGNORE).all()
    assert batch.position_ids[short, n_pad:].tolist() == list(range(width - n_pad))
