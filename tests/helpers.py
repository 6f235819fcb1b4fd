"""Shared test helpers: a small deterministic corpus, a tiny saved model and a CLI runner."""

from __future__ import annotations

import random
from pathlib import Path

from backpacklm.cli.main import main

SUBJECTS = ["the king", "a queen", "my lord", "the fool", "his daughter", "our knight"]
VERBS = ["loves", "fears", "calls", "serves", "sees", "follows"]
OBJECTS = ["the crown", "a horse", "the sea", "her father", "the night", "my sword"]


def write_corpus(path: Path, sentences: int = 1500, seed: int = 0) -> Path:
    """Simple English-like sentences: enough structure for a tiny model to learn within a few dozen steps."""
    rng = random.Random(seed)
    lines = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(sentences)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `backpack ARGV`."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_error(capsys, *argv: str) -> str:
    """The one stderr line of `backpack ARGV`, asserting it fails with exit status 2 and no traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse usage errors exit from inside parse_args
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def save_tiny_char_backpack(directory: Path, text: str = "abcdef \n", n_positions: int = 16) -> Path:
    """An untrained 1-layer Backpack (seed 0) with a character tokenizer over `text`, saved in `directory`."""
    import torch

    from backpacklm.data.tokenizers import build_char_tokenizer
    from backpacklm.model.config import BackpackConfig
    from backpacklm.model.transformer import build_model

    tokenizer = build_char_tokenizer(text)
    torch.manual_seed(0)
    build_model(BackpackConfig(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_senses=2,
                               n_positions=n_positions)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
