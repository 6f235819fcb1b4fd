"""`backpack gist train|compress|generate|eval|bench` end to end on a tiny model, resume, and bad input (one-line
errors, exit 2)."""

from __future__ import annotations

import json

import pytest

from backpacklm.gist.cache import load_compressed
from backpacklm.model.loading import load_model
from tests.gist.cli_checks import check_compress_and_generate_reject_bad_prompts
from tests.helpers import run_cli

TINY = ["--n-embd", "32", "--n-layer", "1", "--n-head", "2", "--num-senses", "2", "--n-positions", "96",
        "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--eval-interval", "10", "--eval-batches", "2",
        "--no-progress", "--threads", "1"]
RECORDS = [{"instruction": instr, "input": " ".join(s), "output": " ".join(f(s))}
           for instr, f in [("reverse the letters", lambda s: s[::-1]), ("sort the letters", sorted)]
           for s in (["c", "a", "b"], ["d", "b"], ["b", "e", "a", "c"], ["a", "d", "c"])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny gist model (k=2) trained for 12 steps through the CLI, with its data file."""
    root = tmp_path_factory.mktemp("gist")
    data = root / "train.json"
    data.write_text(json.dumps(RECORDS))
    from backpacklm.cli.main import main

    assert main(["gist", "train", "--data", str(data), "--out", str(root / "run"), "--gists", "2",
                 "--max-steps", "12", *TINY]) == 0
    return root, data


def test_train_writes_a_gist_model_and_resumes(trained, tmp_path, capsys):
    root, data = trained
    model, tokenizer = load_model(root / "run" / "model")
    assert model.config.num_gists == 2 and model.config.gist_condition == "gist"
    assert tokenizer.convert_tokens_to_ids("<GIST>") == model.config.gist_token_id < model.config.vocab_size
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 12 and "val_loss" in records[-1]
    args = ["gist", "train", "--data", data, "--out", tmp_path / "run", "--gists", "2", "--max-steps", "6",
            "--condition", "neg_control", *TINY]
    assert run_cli(capsys, *args, "--stop-after", "3")[0] == 0
    code, out, err = run_cli(capsys, *args, "--resume")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "latest.json").read_text())["step"] == 6
    assert load_model(tmp_path / "run" / "model")[0].config.gist_condition == "neg_control"


def test_compress_generate_eval_bench(trained, tmp_path, capsys):
    root, data = trained
    model_dir = root / "run" / "model"
    code, out, err = run_cli(capsys, "gist", "compress", "--model", model_dir, "--instructions", data,
                             "--out", tmp_path / "c.safetensors")
    assert code == 0, err
    assert "compressed 2 prompt(s) into 2 gist token(s)" in out
    prompt = "Instruction: sort the letters\n<GIST><GIST>"  # a raw prompt with --keep all stores its whole prefix
    code, out, err = run_cli(capsys, "gist", "compress", "--model", model_dir, "--prompt", prompt, "--keep", "all",
                             "--out", tmp_path / "all.safetensors")
    assert code == 0, err
    stored = load_compressed(tmp_path / "all.safetensors")
    assert stored.keep == "all" and stored.stored_positions.tolist() == [len("Instruction: sort the letters\n") + 2]
    code, out, err = run_cli(capsys, "gist", "compress", "--model", model_dir, "--prompt", prompt, "--gists", "1",
                             "--out", tmp_path / "g.safetensors")
    assert code == 2 and err.count("\n") == 1 and "--gists applies to --instructions only" in err
    assert not (tmp_path / "g.safetensors").exists()
    code, out, err = run_cli(capsys, "gist", "generate", "--model", model_dir, "--compressed", tmp_path / "c.safetensors",
                             "--data", data, "--max-new-tokens", "5", "--out", tmp_path / "gen")
    assert code == 0, err
    generations = json.loads((tmp_path / "gen" / "generations.json").read_text())
    assert len(generations) == len(RECORDS) and generations[0]["instruction"] == RECORDS[0]["instruction"]
    code, out, err = run_cli(capsys, "gist", "eval", "--model", model_dir, "--data", f"seen={data}",
                             "--max-new-tokens", "5", "--out", tmp_path / "eval", "--no-progress")
    assert code == 0 and err == "", err
    quality = json.loads((tmp_path / "eval" / "quality.json").read_text())
    assert quality[0]["splits"]["seen"]["n"] == len(RECORDS) and 0 <= quality[0]["splits"]["seen"]["rouge_l"] <= 100
    assert (tmp_path / "eval" / "quality_vs_compression.png").stat().st_size > 1000
    code, out, err = run_cli(capsys, "gist", "bench", "--model", model_dir, "--data", data, "--batch-sizes", "1", "2",
                             "--new-tokens", "2", "--repeats", "1", "--out", tmp_path / "bench")
    assert code == 0, err
    savings = json.loads((tmp_path / "bench" / "savings.json").read_text())
    assert {(t["method"], t["batch"]) for t in savings["timings"]} == {
        (m, b) for m in ("no_cache", "instruction_cache", "gist_cache") for b in (1, 2)}
    mean = savings["mean"]
    assert mean["kv_bytes"]["instruction_cache"] / mean["kv_bytes"]["gist_cache"] >= mean["instruction_tokens"] / 2
    assert mean["flops"]["gist_cache"] < mean["flops"]["instruction_cache"] < mean["flops"]["no_cache"]


def test_bad_input_is_one_line_exit_2(trained, tmp_path, capsys):
    root, data = trained
    model_dir = root / "run" / "model"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"instruction": "sort", "input": "b a"}]))
    code, out, err = run_cli(capsys, "gist", "train", "--data", missing, "--out", tmp_path / "r", *TINY)
    assert code == 2 and err.count("\n") == 1 and "record 0 has no string field 'output'" in err
    blank = tmp_path / "blank.json"
    blank.write_text(json.dumps(RECORDS[:1] + [{"instruction": " \n", "input": "b a", "output": "a b"}]))
    code, out, err = run_cli(capsys, "gist", "train", "--data", blank, "--out", tmp_path / "r", *TINY)
    assert code == 2 and err.count("\n") == 1 and "record 1 has an empty 'instruction'" in err

    reserved = tmp_path / "reserved.json"
    reserved.write_text(json.dumps(RECORDS[:2] + [{"instruction": "sort <GIST>", "input": "b a", "output": "a b"}]))
    code, out, err = run_cli(capsys, "gist", "train", "--data", reserved, "--out", tmp_path / "r", *TINY)
    assert code == 2 and err.count("\n") == 1 and "record 2's 'instruction' contains <GIST>, which is reserved" in err
    assert run_cli(capsys, "gist", "compress", "--model", model_dir, "--instructions", data,
                   "--out", tmp_path / "c.safetensors")[0] == 0
    code, out, err = run_cli(capsys, "gist", "generate", "--model", model_dir, "--compressed", tmp_path / "c.safetensors",
                             "--input", "a <GIST> b")
    assert code == 2 and err.count("\n") == 1 and "input 'a <GIST> b' contains <GIST>, which is reserved" in err

    long = tmp_path / "long.json"  # one example longer than the 96 positions: an error, or left out with --skip-long
    long.write_text(json.dumps(RECORDS + [{"instruction": "sort the letters", "input": " ".join("cab" * 40),
                                           "output": "a b c"}]))
    code, out, err = run_cli(capsys, "gist", "train", "--data", long, "--val-data", data, "--out", tmp_path / "l",
                             "--max-steps", "2", *TINY)
    assert code == 2 and err.count("\n") == 1 and "1 example(s) have more tokens than the model's 96 positions" in err
    code, out, err = run_cli(capsys, "gist", "train", "--data", long, "--val-data", data, "--out", tmp_path / "l",
                             "--max-steps", "2", "--skip-long", *TINY)
    assert code == 0 and "left out 1 of 9 training and 0 of 8 validation examples longer than 96 tokens" in out, err

    check_compress_and_generate_reject_bad_prompts(capsys, model_dir, tmp_path)
    code, out, err = run_cli(capsys, "gist", "generate", "--model", model_dir, "--compressed", data, "--input", "a b")
    assert code == 2 and err.count("\n") == 1 and "not a readable compressed-prompt file" in err
