"""`backpack heads ...` end to end on saved tiny models of every architecture, and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM

from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.worlds.icl_tasks import icl_corpus

from ..helpers import cli_error, run_cli
from .models import ARCHS, MODEL_CLASSES, tiny_config
from backpacklm.model.transformer import build_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """arch -> a saved tiny random model with a char tokenizer over the built-in tasks' alphabet."""
    root = tmp_path_factory.mktemp("head_models")
    tokenizer = build_char_tokenizer(icl_corpus(n_prompts=30))
    dirs = {}
    for name in ARCHS:
        config = tiny_config(name)
        config.vocab_size = len(tokenizer)
        torch.manual_seed(0)
        model = build_model(config, "transformer") if name == "transformer" else MODEL_CLASSES[name](config)
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs


@pytest.mark.parametrize("name", ARCHS)
def test_every_subcommand_on_every_architecture(name, model_dirs, tmp_path, capsys):
    model = str(model_dirs[name])
    task = ["--builtin", "copy", "--n", "4", "--k", "1", "--batch-size", "16", "--no-progress"]
    out = tmp_path / "out"
    code, text, err = run_cli(capsys, "heads", "importance", "--model", model, *task, "--out", out)
    assert code == 0, err
    scores = json.loads((out / "importance_copy.json").read_text())["scores"]
    assert len(scores) == 2 and len(scores[0]) == 4 and (out / "importance_copy.png").is_file()
    code, text, err = run_cli(capsys, "heads", "eval", "--model", model, *task, "--out", out, "--mask-heads", "1.2",
                              "--mask-ffn", "0", "--prune-percent", "50", "--importance", out / "importance_copy.json")
    assert code == 0, err
    result = json.loads((out / "eval.json").read_text())[0]
    assert "1.2" in result["removed_heads"] and len(result["removed_heads"]) in (4, 5) and result["removed_ffn"] == [0]
    code, text, err = run_cli(capsys, "heads", "induction", "--model", model, "--lengths", "4,6", "--sequences", "2",
                              "--out", out, "--importance", out / "importance_copy.json", "--no-progress")
    assert code == 0, err
    induction = json.loads((out / "induction.json").read_text())
    assert len(induction["prefix_matching"]) == 2 and len(induction["extra"]["capacity_retained"]) in (1, 2)
    if name == "gpt2":  # the slower sweeps once, and loading through accelerate's device_map
        code, text, err = run_cli(capsys, "heads", "eval", "--model", model, *task, "--out", out, "--device-map", "auto")
        assert code == 0, err
        code, text, err = run_cli(capsys, "heads", "ffn", "--model", model, *task, "--out", out)
        assert code == 0, err
        code, text, err = run_cli(capsys, "heads", "prune", "--model", model, *task, "--builtin", "pairs",
                                  "--head-percents", "0,50", "--ffn-percents", "0,50", "--out", out)
        assert code == 0, err
        summary = json.loads((out / "prune.json").read_text())
        assert {c["ranking"] for c in summary["head_curves"]} == {"copy", "pairs", "aggregate"}
        assert summary["transfer"]["correlation"]["copy"]["copy"] == pytest.approx(1.0)
        assert (out / "ffn_pruning_copy.png").is_file() and (out / "head_pruning.png").is_file()


def test_bad_input_is_one_line_exit_2(model_dirs, tmp_path, capsys):
    model = str(model_dirs["gpt2"])
    bloom = tmp_path / "bloom"  # a causal LM without a row in the adapter table
    BloomForCausalLM(BloomConfig(hidden_size=16, n_layer=1, n_head=2, vocab_size=32)).save_pretrained(bloom)
    capsys.readouterr()  # drop the save progress output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [
        (["heads", "induction", "--model", bloom, "--out", tmp_path], "architecture 'bloom'"),
        (["heads", "eval", "--model", model, "--builtin", "copy", "--mask-heads", "0.7", "--out", tmp_path],
         "out of range"),
        (["heads", "eval", "--model", model, "--builtin", "copy", "--mask-ffn", "5", "--out", tmp_path],
         "out of range"),
        (["heads", "importance", "--model", model, "--task", empty, "--out", tmp_path], "empty"),
        (["heads", "prune", "--model", model, "--builtin", "copy", "--head-percents", "0,120", "--out", tmp_path],
         "out of range"),
        (["heads", "eval", "--model", model, "--builtin", "copy", "--prune-percent", "-3", "--importance", "x",
          "--out", tmp_path], "out of range"),
        (["heads", "importance", "--model", model, "--out", tmp_path], "give a task"),
        (["heads", "prune", "--model", model, "--builtin", "copy", "--grid", "--no-ffn", "--out", tmp_path], "--grid"),
        (["heads", "induction", "--model", model, "--exclude", "0.1", "--out", tmp_path], "--exclude needs --data"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    # importance scores the gold continuation's loss: there is no choice scoring to length-normalize
    assert "unrecognized arguments: --length-normalize" in cli_error(
        capsys, "heads", "importance", "--model", model, "--builtin", "copy", "--length-normalize", "token", "--out", tmp_path)


def test_prune_transfer_uses_each_tasks_own_shots(model_dirs, tmp_path, capsys):
    """copy (2 shots by default) and map (16): the transfer step scored every task with the first task's k."""
    from backpacklm.worlds.icl_tasks import DEFAULT_SHOTS

    out = tmp_path / "out"
    code, text, err = run_cli(capsys, "heads", "prune", "--model", str(model_dirs["gpt2"]), "--builtin", "copy",
                              "--builtin", "map", "--n", "8", "--head-percents", "0", "--transfer-percent", "0",
                              "--no-ffn", "--batch-size", "16", "--no-progress", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "prune.json").read_text())
    transfer = summary["transfer"]
    assert transfer["shots"] == {"copy": DEFAULT_SHOTS["copy"], "map": DEFAULT_SHOTS["map"]}
    own = {c["task"]: c["accuracies"][0] for c in summary["head_curves"] if c["ranking"] == c["task"]}
    assert transfer["unpruned"] == own  # 0 %: the unmasked accuracy at the task's own k, exactly
    for source in ("copy", "map", "aggregate"):
        assert transfer["accuracy"][source] == own
