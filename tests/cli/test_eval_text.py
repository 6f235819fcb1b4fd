"""`backpack eval --text` scores every token of the file but the first, even for the shortest texts."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli_error, run_cli, save_tiny_char_backpack


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_text")
    save_tiny_char_backpack(root / "model", n_positions=8)
    return root


@pytest.mark.parametrize("text, scored", [("ab", 1), ("abc", 2), ("abcdefab", 7), ("abcdef\nabcdef\nabc", 16)])
def test_every_token_but_the_first_is_scored(model_dir, capsys, text, scored):
    (model_dir / "t.txt").write_text(text)
    code, out, err = run_cli(capsys, "eval", "--model", model_dir / "model", "--text", model_dir / "t.txt",
                             "--no-progress", "--json", model_dir / "r.json")
    assert code == 0, err
    assert json.loads((model_dir / "r.json").read_text())["tokens"] == scored and f"over {scored} tokens" in out


def test_end_of_text_string_in_the_file_is_text(tmp_path, capsys):
    """A literal <|endoftext|> in the file is 13 characters, as `data prepare` reads it, not the special token."""
    save_tiny_char_backpack(tmp_path / "model", "ab<|endoftext|>", n_positions=32)
    (tmp_path / "t.txt").write_text("ab<|endoftext|>ab")
    code, out, err = run_cli(capsys, "eval", "--model", tmp_path / "model", "--text", tmp_path / "t.txt",
                             "--no-progress")
    assert code == 0 and "over 16 tokens" in out, (out, err)


def test_too_short_text_and_block_are_one_line_errors(model_dir, capsys):
    (model_dir / "one.txt").write_text("a")
    line = cli_error(capsys, "eval", "--model", model_dir / "model", "--text", model_dir / "one.txt")
    assert "1 token(s); perplexity needs at least 2" in line
    (model_dir / "two.txt").write_text("ab")
    line = cli_error(capsys, "eval", "--model", model_dir / "model", "--text", model_dir / "two.txt",
                     "--block-size", "1")
    assert "block size must be at least 2" in line
