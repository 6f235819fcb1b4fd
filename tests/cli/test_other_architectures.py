"""`backpack sample` / `eval` on causal LMs without GPT-2's n_positions (a Llama, as gist fine-tuning makes them),
and a one-line error for encoder-decoder models."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from backpacklm.data.tokenizers import build_char_tokenizer
from tests.helpers import cli_error, run_cli


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    tokenizer = build_char_tokenizer("abcdef \n")
    torch.manual_seed(0)
    llama = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8)
    t5 = T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                  decoder_start_token_id=0, pad_token_id=0)
    for name, model in (("llama", LlamaForCausalLM(llama)), ("t5", T5ForConditionalGeneration(t5))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "text.txt").write_text("abcdef abcdef\nabc")
    return root


def test_llama_samples_within_its_positions_and_evaluates(models, capsys):
    code, out, err = run_cli(capsys, "sample", "--model", models / "llama", "--prompt", "abc", "--max-new-tokens", "20")
    assert code == 0 and out.startswith("abc") and "generating 5 tokens" in err, err
    code, out, err = run_cli(capsys, "eval", "--model", models / "llama", "--text", models / "text.txt", "--no-progress")
    assert code == 0 and "over 16 tokens (block 8)" in out, err


@pytest.mark.parametrize("command", [["sample", "--prompt", "abc"], ["eval", "--text", "{text}"]])
def test_encoder_decoder_is_a_one_line_error(models, capsys, command):
    argv = [a.replace("{text}", str(models / "text.txt")) for a in command]
    line = cli_error(capsys, argv[0], "--model", models / "t5", *argv[1:])
    assert "needs a causal (decoder-only) LM; this is an encoder-decoder T5ForConditionalGeneration" in line


def test_block_larger_than_the_positions_is_a_one_line_error(models, capsys, tmp_path):
    from backpacklm.model.config import BackpackConfig
    from backpacklm.model.transformer import build_model

    build_model(BackpackConfig(vocab_size=9, n_embd=16, n_layer=1, n_head=2, num_senses=2, n_positions=8),
                "transformer").save_pretrained(tmp_path / "gpt2")  # an IndexError in the position embedding before
    build_char_tokenizer("abcdef \n").save_pretrained(tmp_path / "gpt2")
    capsys.readouterr()
    for model in (tmp_path / "gpt2", models / "llama"):  # the Llama ran past its 8 trained positions silently
        line = cli_error(capsys, "eval", "--model", model, "--text", models / "text.txt", "--block-size", "9")
        assert "block size 9 exceeds the model's 8 positions" in line
