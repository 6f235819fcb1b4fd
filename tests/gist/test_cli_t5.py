"""`backpack gist train|compress|generate|eval|bench` on an encoder-decoder T5 directory (a tiny random T5 built here,
saved with a character tokenizer that has no `<GIST>` yet): fine-tuning through the one training loop (loss finite
and falling, resume), generation from compressed prompts equal to the uncached gist-masked model, and bad input."""

from __future__ import annotations

import json
import string

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.gist.cache import SamplingConfig, decode, prefill_uncached
from backpacklm.gist.data import load_examples
from backpacklm.gist.evaluate import predict, rouge_l
from backpacklm.gist.layout import GIST_TOKEN, GistExample, decode_completion, layout_text
from backpacklm.gist.t5 import T5GistLoss, t5_encode_example
from backpacklm.gist.train import GistTrainConfig, InstructionBatches
from backpacklm.model.loading import load_model
from tests.gist.cli_checks import check_compress_and_generate_reject_bad_prompts
from tests.helpers import run_cli

RECORDS = [{"instruction": instr, "input": " ".join(s), "output": " ".join(f(s))}
           for instr, f in [("reverse the letters", lambda s: s[::-1]), ("sort the letters, then say them", sorted)]
           for s in (["c", "a", "b"], ["d", "b"], ["b", "e", "a", "c"], ["a", "d", "c"])]
TRAIN = ["--gists", "2", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--eval-interval", "6",
         "--eval-batches", "1", "--log-interval", "1", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny random T5 (2+2 layers, d=32) with a character tokenizer, and the instruction file."""
    root = tmp_path_factory.mktemp("t5gist")
    data = root / "train.json"
    data.write_text(json.dumps(RECORDS))
    tokenizer = build_char_tokenizer(string.printable + layout_text([GistExample(**r) for r in RECORDS]))
    eos = tokenizer.eos_token_id
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      dropout_rate=0.0, pad_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    return root, data


@pytest.fixture(scope="module")
def trained(t5_dir):
    """Fine-tuned for 12 steps through the CLI: stopped at 6, resumed to 12."""
    root, data = t5_dir
    from backpacklm.cli.main import main

    args = ["gist", "train", "--model", str(root / "t5"), "--data", str(data), "--out", str(root / "run"),
            "--max-steps", "12", *TRAIN]
    assert main([*args, "--stop-after", "6"]) == 0
    assert main([*args, "--resume"]) == 0
    return root, data


def test_gist_row_starts_at_the_mean_and_the_loss_runs_through_the_gist_masks(t5_dir, tmp_path):
    root, data = t5_dir
    source = InstructionBatches(GistTrainConfig(data=str(data), out=str(tmp_path), init_from=str(root / "t5"), gists=2))
    model, _ = load_model(root / "t5")
    old = model.get_input_embeddings().weight.detach().clone()
    source.prepare_model(model, fresh=True)
    rows = model.get_input_embeddings().weight
    assert source.seq2seq and rows.shape[0] == old.shape[0] + 1 == source.gist_id + 1
    assert torch.allclose(rows[source.gist_id], old.mean(0), atol=1e-6)
    assert torch.equal(rows[: old.shape[0]], old) and model.lm_head.weight.shape[0] == rows.shape[0]
    module = source.training_module(model)
    assert isinstance(module, T5GistLoss)
    batch = source.train_batch(4, 0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        gist = module(**batch).loss
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["padding_mask"].long(),
                      labels=batch["labels"]).loss
    assert torch.isfinite(gist) and abs(gist.item() - plain.item()) > 1e-4  # the gist masks change the loss


def test_train_fine_tunes_t5_with_falling_loss_and_resumes(trained):
    root, _ = trained
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records]
    assert [r["step"] for r in records] == list(range(1, 13)) and all(map(lambda x: x == x and x < 1e9, losses))
    assert sum(losses[:3]) / 3 - sum(losses[-3:]) / 3 > 0.5, losses  # nats/token
    assert records[-1]["val_loss"] < records[5]["val_loss"]
    model, tokenizer = load_model(root / "run" / "model")
    assert isinstance(model, T5ForConditionalGeneration)
    assert model.config.num_gists == 2 and model.config.gist_condition == "gist"
    assert tokenizer.convert_tokens_to_ids(GIST_TOKEN) == model.config.gist_token_id == model.config.vocab_size - 1


def test_compress_generate_eval_bench_on_t5(trained, tmp_path, capsys):
    root, data = trained
    model_dir = root / "run" / "model"
    code, out, err = run_cli(capsys, "gist", "compress", "--model", model_dir, "--instructions", data,
                             "--out", tmp_path / "c.safetensors")
    assert code == 0 and "compressed 2 prompt(s) into 2 gist token(s)" in out, err
    code, out, err = run_cli(capsys, "gist", "generate", "--model", model_dir, "--compressed", tmp_path / "c.safetensors",
                             "--data", data, "--max-new-tokens", "8", "--batch-size", "8", "--out", tmp_path / "gen")
    assert code == 0, err
    generations = json.loads((tmp_path / "gen" / "generations.json").read_text())
    # one batch over both instructions (different lengths): the same text as the uncached gist-masked T5, greedy ...
    model, tokenizer = load_model(model_dir)
    examples = load_examples(data)
    uncached = predict(model, tokenizer, examples, max_new_tokens=8, cached=False)
    assert [g["output"] for g in generations] == uncached
    # ... and sampled (the same random stream; diverse, so the comparison has teeth)
    code, out, err = run_cli(capsys, "gist", "generate", "--model", model_dir, "--compressed", tmp_path / "c.safetensors",
                             "--data", data, "--sample", "--top-k", "20", "--seed", "1", "--max-new-tokens", "8",
                             "--batch-size", "8", "--out", tmp_path / "sampled")
    assert code == 0, err
    sampled = [g["output"] for g in json.loads((tmp_path / "sampled" / "generations.json").read_text())]
    sources = [t5_encode_example(tokenizer, e, 2, with_output=False).source for e in examples]
    state = prefill_uncached(model, sources, model.config.gist_token_id, "gist", tokenizer.eos_token_id)
    ids = decode(model, state, tokenizer.eos_token_id, SamplingConfig(8, do_sample=True, top_k=20, seed=1))
    assert sampled == [decode_completion(tokenizer, row) for row in ids] and len(set(sampled)) > 2

    code, out, err = run_cli(capsys, "gist", "eval", "--model", model_dir, "--data", f"seen={data}",
                             "--max-new-tokens", "8", "--out", tmp_path / "eval")
    assert code == 0, err
    seen = json.loads((tmp_path / "eval" / "quality.json").read_text())[0]["splits"]["seen"]
    assert seen["n"] == len(RECORDS)
    assert abs(seen["rouge_l"] - rouge_l(uncached, [r["output"] for r in RECORDS])) < 1e-9
    assert (tmp_path / "eval" / "quality_vs_compression.png").stat().st_size > 1000

    code, out, err = run_cli(capsys, "gist", "bench", "--model", model_dir, "--data", data, "--batch-sizes", "1", "4",
                             "--new-tokens", "2", "--repeats", "1", "--out", tmp_path / "bench")
    assert code == 0, err
    savings = json.loads((tmp_path / "bench" / "savings.json").read_text())
    assert {(t["method"], t["batch"]) for t in savings["timings"]} == {
        (m, b) for m in ("no_cache", "instruction_cache", "gist_cache") for b in (1, 4)}
    mean = savings["mean"]
    assert mean["kv_bytes"]["gist_cache"] == 2 * 4 * (2 * 2 * 4 * 8 + 32)  # k x (encoder K/V per layer + output)
    assert mean["kv_bytes"]["instruction_cache"] / mean["kv_bytes"]["gist_cache"] >= mean["instruction_tokens"] / 2
    assert mean["flops"]["gist_cache"] < mean["flops"]["instruction_cache"] < mean["flops"]["no_cache"]


def test_bad_input_on_t5_is_one_line_exit_2(trained, tmp_path, capsys):
    root, data = trained
    model_dir = root / "run" / "model"
    check_compress_and_generate_reject_bad_prompts(capsys, model_dir, tmp_path)
    code, out, err = run_cli(capsys, "gist", "train", "--model", root / "t5", "--data", data, "--out",
                             tmp_path / "r", "--gists", "65", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--gists must be between 1 and 64" in err
