"""The demo `make demo` runs: Shakespeare, char-level, a tiny Backpack trained for a few minutes on the CPU, then
samples and sense projections. Every step is the public API, so this file doubles as a usage example."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .data.prepare import prepare_corpus
from .data.tokenizers import check_encodable, load_tokenizer
from .errors import BackpackError
from .model.tied_loss import lean_loss
from .model.loading import load_model
from .sampling import sample_text
from .senses.projection import format_projection, sense_projection
from .train.loop import TrainConfig, model_config, train

PROMPTS = ["Ham.\n", "KING.\nMy lord, ", "O, "]
SENSE_TOKENS = ["e", "?", "\n"]
DEMO_TRAINING = dict(preset="tiny", batch_size=8, block_size=256, lr=2e-3, warmup_steps=50, eval_interval=200,
                     eval_batches=20, log_interval=10)


def steps_for(minutes: float, data_dir: Path) -> int:
    """Optimizer steps that fit in `minutes` on this machine, from a few timed steps of the same model."""
    from .data.dataset import TokenData, sample_batch
    from .model.transformer import build_model
    from .train.optim import make_optimizer

    data = TokenData(data_dir)
    cfg = TrainConfig(data=str(data_dir), out="", **DEMO_TRAINING)
    model = build_model(model_config(cfg, data.meta)).train()
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    generator = torch.Generator().manual_seed(0)
    timings = []
    for _ in range(6):
        batch = sample_batch(data.train, cfg.batch_size, cfg.block_size, generator)
        start = time.perf_counter()
        lean_loss(model)(input_ids=batch, labels=batch).loss.backward()  # as the trainer calls it
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    per_step = sorted(timings[1:])[len(timings[1:]) // 2] * 1.1  # median, plus evaluation and checkpoint overhead
    return max(100, int(minutes * 60 / per_step))


def training_report(summary: dict, planned_steps: int) -> str:
    """The steps reached (and why the run stopped early) and the validation loss against the unigram baseline."""
    val, unigram = summary["val_loss"], summary["unigram_val_loss"]
    stopped = f", stopped by {summary['stopped_by']}" if summary["stopped_by"] else ""
    versus = f"{unigram - val:.2f} nats better than" if val < unigram else f"{val - unigram:.2f} nats WORSE than"
    return (f"   {summary['step']} of {planned_steps} steps{stopped}: validation loss {val:.3f} nats/char, {versus} the "
            f"unigram baseline ({unigram:.3f}); perplexity {math.exp(val):.2f}")


def _prepare_fresh(out: Path, data: str) -> dict:
    """Prepare `data` (char-level) beside `out`, check the demo's prompts fit it, and only then replace a previous
    demo run at `out` with the fresh folder: bad data leaves the previous run as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        meta = prepare_corpus([data], staging / "data", tokenizer="char")
        tokenizer = load_tokenizer(staging / "data" / "tokenizer")
        for text in PROMPTS + SENSE_TOKENS:
            try:
                check_encodable(tokenizer, text)
            except BackpackError as err:
                raise BackpackError(f"{data}: the demo's prompts and tokens need characters this text lacks "
                                    f"({err})") from None
        (staging / "demo.json").write_text("{}")
        shutil.rmtree(out, ignore_errors=True)  # a previous demo run: start afresh
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def run_demo(out: str | Path = "runs/demo", minutes: float = 3.0, data: str = "shakespeare") -> dict:
    out = Path(out)
    if out.exists() and not (out / "demo.json").exists():
        raise BackpackError(f"{out} exists and is not a demo run; choose another --out")

    print(f"== 1. data: {data}, char-level")
    meta = _prepare_fresh(out, data)
    print(f"   {meta['n_train_tokens']:,} training and {meta['n_val_tokens']:,} validation characters, "
          f"vocabulary {meta['vocab_size']}")

    steps = steps_for(minutes, out / "data")
    print(f"== 2. train the tiny Backpack for {steps} steps (~{minutes:g} min on this machine)")
    summary = train(TrainConfig(data=str(out / "data"), out=str(out / "run"), max_steps=steps,
                                max_minutes=minutes * 1.15, **DEMO_TRAINING))
    print(training_report(summary, steps))

    model, tokenizer = load_model(out / "run")
    print("== 3. samples (temperature 0.8, top-k 40)")
    samples = []
    for i, prompt in enumerate(PROMPTS):
        text = sample_text(model, tokenizer, prompt, max_new_tokens=220, temperature=0.8, top_k=40, seed=i)[0]
        samples.append(text)
        print(f"--- sample {i + 1} (prompt {prompt!r}) ---\n{text}\n")
    (out / "samples.txt").write_text("\n\n".join(samples))

    print("== 4. what each sense of a token raises / lowers in the next-character distribution")
    projections = [sense_projection(model, tokenizer, token, top=8) for token in SENSE_TOKENS]
    for projection in projections:
        print(format_projection(projection, top=8))
    (out / "senses.json").write_text(json.dumps([p.to_dict() for p in projections], indent=1))

    result = {**summary, "samples": str(out / "samples.txt"), "senses": str(out / "senses.json"),
              "loss_curve": str(out / "run" / "loss_curve.png"), "model": str(out / "run" / "model")}
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    print("== where everything went")
    for key in ("model", "loss_curve", "samples", "senses"):
        print(f"   {key:<11} {result[key]}")
    print(f"   metrics     {out / 'run' / 'metrics.jsonl'}\n   data        {out / 'data'}")
    return result
