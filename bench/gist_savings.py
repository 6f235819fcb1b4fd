"""Gist tokens on the synthetic instruction world: quality per condition and k, and what gist caching saves.

Claims under test (issue 5, sec. 4-5): gist-1 ROUGE-L on seen instructions is within 10 points of pos_control and
20+ above neg_control; gist caching stores >= instruction_tokens / k times fewer key/value bytes than instruction
caching, and its time to first token is lower than no caching for instructions of 50+ tokens.

Steps: generate the world (`backpacklm.worlds.instructions`, seed 0, the one-symbol tasks first/last/min/max/count),
train from scratch one char-level model (default: our Transformer, d=64, L=2; `--arch backpack`) per (condition, k) with `train_gist` (gist k = 1, 2, 5, 10; pos_control and neg_control with k = 1), evaluate greedy
completions on every split (ROUGE-L, exact match), and time no cache / instruction cache / gist cache on the `long`
split's prompts (50+ tokens; those that fit the model's 256 positions with 16 new tokens) with the gist-1 model
at batch 1 and 8. Runs whose final checkpoint exists are reused.

Writes bench/results/gist_savings.json (quality and savings) and gist_savings.md. The quality table of record is
bench/gist_world.py's (word-level world, every condition at k = 1, 2, 5, 10).
Run:  .venv/bin/python bench/gist_savings.py [--steps 400 --work /tmp/gist_bench --threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import RESULTS_DIR, save_result

from backpacklm.gist.data import load_examples
from backpacklm.gist.evaluate import evaluate_gist, quality_table
from backpacklm.gist.layout import encode_example
from backpacklm.gist.savings import measure_savings
from backpacklm.gist.train import GistTrainConfig, train_gist
from backpacklm.model.loading import load_model
from backpacklm.worlds.instructions import InstructionWorldConfig, generate_instruction_world, write_instruction_world

RUNS = [("gist", 1), ("neg_control", 1), ("pos_control", 1), ("gist", 2), ("gist", 5), ("gist", 10)]
# the one-symbol tasks (as in tests/gist/test_ground_truth.py): learnable by a 2-layer char model in a few hundred steps
WORLD = dict(seed=0, tasks=("first", "last", "min", "max", "count"), letters="abcdef", max_len=5, composite_fraction=0.0)
MODEL = dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)  # room for the long split's prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--arch", default="transformer", choices=["transformer", "backpack"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=100, help="examples per evaluation split")
    parser.add_argument("--work", default="/tmp/gist_bench", help="world files and training runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="*", default=None, help="subset, e.g. gist:1 neg_control:1")
    parser.add_argument("--train-only", action="store_true", help="only train (e.g. a second process for some runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if not (work / "world" / "train.json").is_file():  # reuse: the runs in `work` were trained on these files
        world = generate_instruction_world(InstructionWorldConfig(n_train=args.n_train, n_eval=args.n_eval, **WORLD))
        write_instruction_world(world, work / "world")
    paths = {path.stem: path for path in sorted((work / "world").glob("*.json"))}
    # `long` (instructions of 50+ tokens, beyond the training lengths) is for the savings timing, not for quality
    splits = {name: str(path) for name, path in paths.items() if name not in ("train", "ground_truth", "long")}
    runs = [(c, int(k)) for c, k in (r.split(":") for r in args.runs)] if args.runs else RUNS

    evaluations, training = [], {}
    for condition, k in runs:
        out = work / f"{condition}-k{k}"
        summary_path = out / "summary.json"
        done = summary_path.is_file() and json.loads(summary_path.read_text())["step"] >= args.steps
        if not done:
            train_gist(GistTrainConfig(
                data=str(paths["train"]), out=str(out), gists=k, condition=condition, max_steps=args.steps, arch=args.arch,
                batch_size=args.batch_size, lr=3e-3, warmup_steps=30, eval_interval=max(args.steps // 4, 1),
                model_overrides=MODEL, threads=args.threads, resume=out.exists() and (out / "latest.json").exists(),
            ))
        training[f"{condition}-k{k}"] = json.loads(summary_path.read_text())
        if args.train_only:
            continue
        evaluation = evaluate_gist(out / "model", splits, batch_size=50, max_new_tokens=32, progress=True)
        evaluations.append(evaluation)
        print(f"{condition} k={k}: " + ", ".join(f"{s} {v.rouge_l:.1f}" for s, v in evaluation.splits.items()),
              flush=True)
        save_result("gist_savings", {"settings": {**vars(args), "model": MODEL, "world": WORLD, "runs": runs},
                                     "training": training,
                                     "quality": [e.to_dict() for e in evaluations], "savings": None})

    if args.train_only:
        return
    table = quality_table(evaluations)
    print(table)
    model_dir = work / "gist-k1" / "model"
    savings = None
    if model_dir.exists():
        model, tokenizer = load_model(model_dir)
        fits = lambda e: len(encode_example(tokenizer, e, 1, with_output=False).input_ids) + 16 <= MODEL["n_positions"]
        long_examples = [e for e in load_examples(paths["long"]) if fits(e)][:32]
        report = measure_savings(model, tokenizer, long_examples, batch_sizes=(1, 8), new_tokens=16, repeats=5,
                                 name="gist-k1 (world, long split)")
        savings = report.to_dict()
        print(report.table())
        (RESULTS_DIR / "gist_savings.md").write_text(report.table() + "\n")
    save_result("gist_savings", {
        "settings": {**vars(args), "model": MODEL, "world": WORLD, "runs": runs},
        "training": training,
        "quality": [e.to_dict() for e in evaluations],
        "savings": savings,
    })


if __name__ == "__main__":
    main()
