"""Bad-input checks shared by the decoder-only and T5 CLI tests of `backpack gist`."""

from __future__ import annotations

import torch

from backpacklm.model.loading import load_model
from tests.helpers import run_cli


def check_compress_and_generate_reject_bad_prompts(capsys, model_dir, tmp_path) -> None:
    """A prompt without <GIST> to `compress`, and a compressed file from another model to `generate`: one line, exit 2,
    nothing written."""
    code, out, err = run_cli(capsys, "gist", "compress", "--model", model_dir, "--prompt", "Instruction: sort\n",
                             "--out", tmp_path / "x.safetensors")
    assert code == 2 and err.count("\n") == 1 and "has no <GIST> token" in err
    assert not (tmp_path / "x.safetensors").exists()

    assert run_cli(capsys, "gist", "compress", "--model", model_dir, "--prompt", "Instruction: sort\n<GIST><GIST>",
                   "--out", tmp_path / "c.safetensors")[0] == 0
    model, tokenizer = load_model(model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight[0] += 0.5
    model.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    code, out, err = run_cli(capsys, "gist", "generate", "--model", tmp_path / "other", "--compressed",
                             tmp_path / "c.safetensors", "--input", "a b")
    assert code == 2 and err.count("\n") == 1 and "compressed by another model" in err
