"""Gist tokens on the synthetic instruction world, read through its ground truth: ROUGE-L per split (seen,
unseen_phrasing, unseen_composition) and per task, for gist k = 1, 2, 5, 10 against pos_control and neg_control.

Each (condition, k) is one char-level model trained from scratch with `train_gist` on the world's train split
(`backpacklm.worlds.instructions`, default tasks, seed 0); runs whose final checkpoint exists in --work are reused
(runs of bench/gist_savings.py can be shared by passing its --work, if it used the same world, steps and model).
Per-task scores group the examples of a split by their ground-truth task(s) (ground_truth.json): they show which
operations survive compression into k gists and which only the full instruction (pos_control) supports.

Writes bench/results/gist_world.json and gist_world.md.
Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/gist_world.py [--steps 500 --work /tmp/gist_world --threads 1]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from common import RESULTS_DIR, save_result

from backpacklm.gist.data import load_examples
from backpacklm.gist.evaluate import predict, rouge_l
from backpacklm.gist.layout import encode_instruction
from backpacklm.gist.train import GistTrainConfig, train_gist
from backpacklm.model.loading import load_model
from backpacklm.worlds.instructions import InstructionWorldConfig, generate_instruction_world, write_instruction_world

RUNS = [("gist", 1), ("neg_control", 1), ("pos_control", 1), ("gist", 2), ("gist", 5), ("gist", 10)]
SPLITS = ("seen", "unseen_phrasing", "unseen_composition")
# 3 layers: under the gist mask the task reaches the answer only at layer 2, and the lookup into the input needs one
# more (with 2 layers gist-1 scored like neg_control in tests/gist/test_ground_truth.py)
MODEL = dict(n_embd=64, n_layer=3, n_head=2, num_senses=4, n_positions=256)


def train_or_reuse(paths, out: Path, condition: str, k: int, args) -> dict:
    summary = out / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text())["step"] >= args.steps):
        train_gist(GistTrainConfig(
            data=str(paths["train"]), out=str(out), gists=k, condition=condition, max_steps=args.steps,
            batch_size=args.batch_size, lr=3e-3, warmup_steps=30, eval_interval=max(args.steps // 4, 1),
            model_overrides=MODEL, threads=args.threads, resume=(out / "latest.json").exists(),
        ))
    return json.loads(summary.read_text())


def scores_by_task(predictions: list[str], examples, truth: list[dict]) -> dict[str, float]:
    """ROUGE-L per ground-truth task (compositions named "a+b", and all of them together as "composed")."""
    groups = defaultdict(list)
    for prediction, example, info in zip(predictions, examples, truth):
        groups["+".join(info["tasks"])].append((prediction, example.output))
        if len(info["tasks"]) > 1:
            groups["composed"].append((prediction, example.output))
    return {task: rouge_l(*map(list, zip(*pairs))) for task, pairs in sorted(groups.items())}


def markdown(results: list[dict], instruction_tokens: float) -> str:
    lines = [f"Mean instruction length (seen split): {instruction_tokens:.1f} tokens.", "",
             "| condition | k | compression | " + " | ".join(f"{s} ROUGE-L" for s in SPLITS) + " |",
             "|---|---|---|" + "---|" * len(SPLITS)]
    for r in results:
        cells = " | ".join(f"{r['rouge_l'][s]:.1f}" if s in r["rouge_l"] else "-" for s in SPLITS)
        lines.append(f"| {r['condition']} | {r['k']} | {instruction_tokens / r['k']:.0f}x | {cells} |")
    tasks = sorted({t for r in results for t in r["by_task"]["seen"] if "+" not in t})  # single tasks, "composed"
    lines += ["", "Seen split, ROUGE-L per task:", "",
              "| condition | k | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for r in results:
        cells = " | ".join(f"{r['by_task']['seen'].get(t, float('nan')):.0f}" for t in tasks)
        lines.append(f"| {r['condition']} | {r['k']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-eval", type=int, default=100, help="examples per evaluation split")
    parser.add_argument("--work", default="/tmp/gist_world", help="world files and training runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", nargs="*", default=None, help="subset, e.g. gist:1 neg_control:1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    world = generate_instruction_world(InstructionWorldConfig(n_train=args.n_train, n_eval=args.n_eval))
    paths = write_instruction_world(world, work / "world")
    runs = [(c, int(k)) for c, k in (r.split(":") for r in args.runs)] if args.runs else RUNS
    splits = {s: load_examples(paths[s]) for s in SPLITS if s in paths}

    results = []
    for condition, k in runs:
        out = work / f"{condition}-k{k}"
        training = train_or_reuse(paths, out, condition, k, args)
        model, tokenizer = load_model(out / "model")
        result = {"condition": condition, "k": k, "training": training, "rouge_l": {}, "by_task": {}, "samples": {}}
        for split, examples in splits.items():
            predictions = predict(model, tokenizer, examples, batch_size=50, max_new_tokens=32)
            result["rouge_l"][split] = rouge_l(predictions, [e.output for e in examples])
            result["by_task"][split] = scores_by_task(predictions, examples, world.truth[split])
            result["samples"][split] = [{"instruction": e.instruction, "input": e.input, "output": e.output,
                                         "prediction": p} for e, p in zip(examples[:5], predictions)]
        results.append(result)
        print(f"{condition} k={k}: " + ", ".join(f"{s} {v:.1f}" for s, v in result["rouge_l"].items()), flush=True)
        save_result("gist_world", {"settings": {**vars(args), "model": MODEL, "runs": runs}, "results": results})

    seen = splits["seen"]
    tokens = sum(len(encode_instruction(tokenizer, e.instruction, 0)) for e in seen) / len(seen)
    table = markdown(results, tokens)
    print(table)
    (RESULTS_DIR / "gist_world.md").write_text(table + "\n")
    save_result("gist_world", {"settings": {**vars(args), "model": MODEL, "runs": runs}, "results": results,
                               "mean_instruction_tokens": tokens})


if __name__ == "__main__":
    main()
