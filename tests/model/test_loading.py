"""resolve_model_dir: a broken run manifest (latest.json) is a one-line BackpackError, never a traceback."""

from __future__ import annotations

import pytest

from backpacklm.errors import BackpackError
from backpacklm.model.loading import resolve_model_dir


@pytest.mark.parametrize("manifest, message", [
    ("[1]", "not a valid run manifest"),
    ('{"checkpoint": 5}', "not a valid run manifest"),
    ('{"step": 5}', "not a valid run manifest"),
    ("{not json", "not a valid run manifest"),
    ('{"checkpoint": "."}', "names .*run, which is not a model directory"),  # was endless recursion
    ('{"checkpoint": "step-1"}', "names .*step-1, which is not a model directory"),
])
def test_broken_manifests(tmp_path, manifest, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest.json").write_text(manifest)
    with pytest.raises(BackpackError, match=message):
        resolve_model_dir(tmp_path / "run")


def test_manifest_names_the_checkpoint(tmp_path):
    (tmp_path / "run" / "step-1").mkdir(parents=True)
    (tmp_path / "run" / "step-1" / "config.json").write_text("{}")
    (tmp_path / "run" / "latest.json").write_text('{"checkpoint": "step-1", "step": 1}')
    assert resolve_model_dir(tmp_path / "run") == tmp_path / "run" / "step-1"


def test_unloadable_tokenizer_is_one_line(tmp_path, capsys):
    """tokenizer_config.json without tokenizer.json: transformers' message has 5 lines."""
    from backpacklm.data.tokenizers import build_char_tokenizer
    from backpacklm.model.config import BackpackConfig
    from backpacklm.model.transformer import build_model
    from tests.helpers import cli_error

    tokenizer = build_char_tokenizer("abc")
    build_model(BackpackConfig(vocab_size=len(tokenizer), n_embd=8, n_layer=1, n_head=2, num_senses=2,
                               n_positions=8)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    capsys.readouterr()
    line = cli_error(capsys, "sample", "--model", tmp_path)
    assert line.startswith(f"backpack sample: error: cannot load the tokenizer in {tmp_path}: Couldn't instantiate")
