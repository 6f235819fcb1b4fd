"""What gist caching saves on the synthetic instruction world's long instructions (issue 5, sec. 4-5).

Claims under test: gist caching stores >= instruction_tokens / k times fewer key/value bytes than caching the whole
instruction, and reaches the first token sooner than no caching for instructions of 50+ tokens.

Steps (the protocol of tests/gist/test_ground_truth.py, at its scale): generate the world (seed 0, the one-symbol tasks
first/last/min/max/count, word-level tokenizer), train a base Transformer here from scratch (d=32, L=4, H=4) with the
plain causal mask, fine-tune it with k = 1 under the gist mask, then time no cache / instruction cache / gist cache on
the `long` split's prompts (50+ tokens) at batch 1 and 8: stored bytes, analytic FLOPs of the post-instruction
forward, time to first token and per generated token (median of `--repeats`). Runs whose checkpoint exists in
`--work` are reused. Quality per condition and k is bench/gist_world.py's.

Writes bench/results/<out>.json and <out>.md (--out, default gist_savings).
Run:  .venv/bin/python bench/gist_savings.py [--work /tmp/gist_savings --threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import RESULTS_DIR, save_result

from backpacklm.gist.data import load_examples
from backpacklm.gist.layout import GistExample, build_gist_word_tokenizer
from backpacklm.gist.savings import measure_savings
from backpacklm.gist.train import GistTrainConfig, train_gist
from backpacklm.model.loading import load_model
from backpacklm.worlds.instructions import InstructionWorldConfig, generate_instruction_world, write_instruction_world

WORLD = dict(seed=0, n_train=2000, n_eval=100, tasks=("first", "last", "min", "max", "count"), letters="abcdef",
             max_len=5, composite_fraction=0.0)
MODEL = dict(n_embd=32, n_layer=4, n_head=4, n_positions=128)
BASE = dict(max_steps=1200, batch_size=32, lr=1e-2, warmup_steps=30, seed=0)
FINETUNE = dict(max_steps=600, batch_size=32, lr=3e-3, warmup_steps=30, seed=0)


def trained(out: Path, config: GistTrainConfig) -> Path:
    """Train unless `out` already holds the finished run; returns its model directory."""
    summary = out / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text())["step"] >= config.max_steps):
        train_gist(config)
    return out / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/gist_savings", help="world files and training runs")
    parser.add_argument("--prompts", type=int, default=32, help="long-split prompts timed")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="gist_savings", help="results name: bench/results/<out>.json and <out>.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if not (work / "world" / "train.json").is_file():
        world = generate_instruction_world(InstructionWorldConfig(**WORLD))
        write_instruction_world(world, work / "world")
        examples = [GistExample(**record) for records in world.splits.values() for record in records]
        build_gist_word_tokenizer(examples).save_pretrained(work / "tokenizer")
    train = str(work / "world" / "train.json")
    common = dict(data=train, gists=1, eval_interval=10**6, threads=args.threads)
    base = trained(work / "base", GistTrainConfig(out=str(work / "base"), arch="transformer", model_overrides=MODEL,
                                                  tokenizer=str(work / "tokenizer"), condition="pos_control",
                                                  **common, **BASE))
    gist = trained(work / "gist-k1", GistTrainConfig(out=str(work / "gist-k1"), init_from=str(base),
                                                     condition="gist", **common, **FINETUNE))
    model, tokenizer = load_model(gist)
    examples = load_examples(work / "world" / "long.json")[: args.prompts]
    report = measure_savings(model, tokenizer, examples, batch_sizes=(1, 8), new_tokens=args.new_tokens,
                             repeats=args.repeats, name="gist-k1 (instruction world, long split)")
    print(report.table())
    (RESULTS_DIR / f"{args.out}.md").write_text(report.table() + "\n", encoding="utf-8")
    save_result(args.out, {"settings": {**vars(args), "world": WORLD, "model": MODEL, "base": BASE,
                                        "finetune": FINETUNE},
                           "savings": report.to_dict()})


if __name__ == "__main__":
    main()
