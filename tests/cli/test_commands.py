"""sample / eval / senses / demo pieces through the CLI, and every bad input as a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest

from backpacklm.data.prepare import prepare_corpus
from backpacklm.train.loop import TrainConfig, train
from tests.helpers import run_cli, write_corpus

TINY = dict(n_embd=32, n_layer=2, n_head=2, num_senses=4, n_positions=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A char-level Backpack and Transformer. 160 steps, not 80: at 80 the Backpack's loss had only begun to leave
    the unigram plateau (margin to the eval test's bar 0.04-0.19 nats on training seeds 0-3 and 1337, -0.05 on one);
    at 160 it is 0.57-0.98."""
    root = tmp_path_factory.mktemp("cli")
    prepare_corpus([str(write_corpus(root / "corpus.txt"))], root / "data", tokenizer="char")
    for arch in ("backpack", "transformer"):
        train(TrainConfig(data=str(root / "data"), out=str(root / arch), arch=arch, model_overrides=TINY,
                          max_steps=160, batch_size=8, block_size=32, lr=3e-3, warmup_steps=5, eval_interval=80,
                          eval_batches=2, progress=False))
    return root


def one_line_error(code, out, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]


def test_sample_is_reproducible_and_continues_the_prompt(trained, capsys):
    args = ["sample", "--model", trained / "backpack", "--prompt", "the king", "--max-new-tokens", "40", "--seed", "3"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert out.startswith("the king") and len(out.strip()) >= len("the king") + 30
    assert run_cli(capsys, *args)[1] == out
    code, greedy, _ = run_cli(capsys, "sample", "--model", trained / "transformer", "--prompt", "a q", "--greedy",
                              "--max-new-tokens", "10")
    assert code == 0 and greedy.startswith("a q")


def test_eval_reports_perplexity_below_uniform(trained, capsys, tmp_path):
    code, out, err = run_cli(capsys, "eval", "--model", trained / "backpack", "--data", trained / "data",
                             "--block-size", "32", "--json", tmp_path / "ppl.json")
    assert code == 0, err
    result = json.loads((tmp_path / "ppl.json").read_text())
    unigram = json.loads((trained / "backpack" / "summary.json").read_text())["unigram_val_loss"]
    assert result["loss"] < unigram - 0.1 and "perplexity" in out
    (tmp_path / "held_out.txt").write_text("the fool sees the sea.\nmy lord calls a horse.\n" * 8)
    code, out, err = run_cli(capsys, "eval", "--model", trained / "backpack", "--text", tmp_path / "held_out.txt")
    assert code == 0 and "perplexity" in out, err


def test_senses_lists_every_sense(trained, capsys, tmp_path):
    code, out, err = run_cli(capsys, "senses", "--model", trained / "backpack", "--token", "k", "--token", " ",
                             "--top", "5", "--json", tmp_path / "s.json")
    assert code == 0, err
    assert out.count("sense ") == 2 * TINY["num_senses"]
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [len(p["raised"]) for p in saved] == [4, 4] and len(saved[0]["raised"][0]) == 5


def test_bad_inputs_are_one_line_errors(trained, capsys, tmp_path):
    model = trained / "backpack"
    one_line_error(*run_cli(capsys, "sample", "--model", model, "--prompt", "the king@"), "@")
    one_line_error(*run_cli(capsys, "sample", "--model", tmp_path / "nowhere"), "does not exist")
    one_line_error(*run_cli(capsys, "senses", "--model", trained / "transformer", "--token", "a"), "Backpack")
    one_line_error(*run_cli(capsys, "senses", "--model", model, "--token", "@"), "@")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    one_line_error(*run_cli(capsys, "eval", "--model", model, "--text", tmp_path / "latin1.txt"), "UTF-8")
    (tmp_path / "empty.txt").write_text("")
    one_line_error(*run_cli(capsys, "eval", "--model", model, "--text", tmp_path / "empty.txt"), "empty")
    one_line_error(*run_cli(capsys, "train", "--data", tmp_path / "nodata", "--out", tmp_path / "r"), "data")
    one_line_error(*run_cli(capsys, "eval", "--model", tmp_path, "--text", tmp_path / "empty.txt"), "not a model")

    checkpoint = (model / "model").resolve()
    other = tmp_path / "other_config"
    shutil.copytree(checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["n_embd"], config["n_head"] = 64, 2
    (other / "config.json").write_text(json.dumps(config))
    one_line_error(*run_cli(capsys, "sample", "--model", other), "does not match its config (mismatched keys: ",
                   "sense_network.", "is [", "in the file", "by the config")

    truncated = tmp_path / "truncated"
    shutil.copytree(checkpoint, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    one_line_error(*run_cli(capsys, "sample", "--model", truncated), "cannot load")

    garbage = tmp_path / "garbage"
    shutil.copytree(checkpoint, garbage)
    (garbage / "model.safetensors").write_bytes(b"this is not a checkpoint")
    one_line_error(*run_cli(capsys, "eval", "--model", garbage, "--data", trained / "data"), "cannot load")

    shutil.copytree(model, tmp_path / "run_copy", symlinks=True)
    (tmp_path / "run_copy" / (model / "model").resolve().name / "training_state.safetensors").write_bytes(b"\0" * 10)
    one_line_error(*run_cli(capsys, "train", "--data", trained / "data", "--out", tmp_path / "run_copy", "--resume"),
                   "training state")


def test_demo_reports_steps_reached_and_which_side_of_the_baseline():
    from backpacklm.demo import training_report

    early = {"step": 14, "stopped_by": "time limit", "val_loss": 3.427, "unigram_val_loss": 3.319}
    assert training_report(early, 100) == ("   14 of 100 steps, stopped by time limit: validation loss 3.427 nats/char, "
                                           "0.11 nats WORSE than the unigram baseline (3.319); perplexity 30.78")
    done = {"step": 100, "stopped_by": None, "val_loss": 2.0, "unigram_val_loss": 3.319}
    assert training_report(done, 100).startswith("   100 of 100 steps: validation loss 2.000 nats/char, 1.32 nats "
                                                  "better than the unigram baseline (3.319); perplexity 7.39")
