"""`backpack sample` option combinations on a tiny untrained model."""

from __future__ import annotations

import pytest
import torch

from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.model.config import BackpackConfig
from backpacklm.model.transformer import build_model
from tests.helpers import cli_error, run_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_options")
    tokenizer = build_char_tokenizer("abcdef \n")
    torch.manual_seed(0)
    build_model(BackpackConfig(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_senses=2,
                               n_positions=16)).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def test_greedy_with_several_samples_is_a_one_line_error(model_dir, capsys):
    line = cli_error(capsys, "sample", "--model", model_dir, "--prompt", "ab", "--greedy", "--num-samples", "2")
    assert "greedy decoding gives a single continuation; ask for 1 sample, not 2" in line
    code, out, err = run_cli(capsys, "sample", "--model", model_dir, "--prompt", "ab", "--greedy",
                             "--max-new-tokens", "5")
    assert code == 0 and out.startswith("ab") and len(out.rstrip("\n")) <= 7, err
