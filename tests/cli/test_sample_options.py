"""`backpack sample` option combinations on a tiny untrained model."""

from __future__ import annotations

import pytest

from tests.helpers import cli_error, run_cli, save_tiny_char_backpack


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_char_backpack(tmp_path_factory.mktemp("sample_options"))


def test_greedy_with_several_samples_is_a_one_line_error(model_dir, capsys):
    line = cli_error(capsys, "sample", "--model", model_dir, "--prompt", "ab", "--greedy", "--num-samples", "2")
    assert "greedy decoding gives a single continuation; ask for 1 sample, not 2" in line
    code, out, err = run_cli(capsys, "sample", "--model", model_dir, "--prompt", "ab", "--greedy",
                             "--max-new-tokens", "5")
    assert code == 0 and out.startswith("ab") and len(out.rstrip("\n")) <= 7, err
