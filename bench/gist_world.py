"""Gist tokens on the synthetic instruction world, read through its ground truth: ROUGE-L per split (seen,
unseen_phrasing, unseen_composition) and per task, for gist against pos_control and neg_control at k = 1, 2, 5, 10.

World (`backpacklm.worlds.instructions`, seed 0): reverse, sort and the one-symbol tasks first, last, min, max, count
on 3-5 distinct letters of a-f, 30% of the examples composed of two tasks ("sort the letters, then give ..."); all
phrasings of these seven tasks have four words, so with the word-level tokenizer used here the instruction's length
(seen by every condition through the input's position ids) tells only whether it is composed and by which
connective, never the task. Each (condition, k) is one word-level Transformer fine-tuned by `train_gist` on
the train split, with the same model, data, steps and seed, starting from one shared base model (a plain causal LM
trained here from scratch on the train split: the paper fine-tunes a trained LM too). Per-task scores group a split's examples by their
ground-truth task(s) (ground_truth.json).

Runs whose final checkpoint and evaluation exist in --work are reused, so several processes can share the work
(`--runs gist:1 gist:2 ...`) and a last plain invocation collects everything.
Writes bench/results/<out>.json, <out>.md and <out>.png (quality vs compression; --out, default gist_world).
Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/gist_world.py [--base-steps 1500 --steps 600 --work /tmp/gist_world]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from common import RESULTS_DIR, save_result

from backpacklm.atomic import write_json_atomic
from backpacklm.gist.data import load_examples
from backpacklm.gist.evaluate import GistEvaluation, SplitScores, exact_match, predict, rouge_l
from backpacklm.gist.layout import GistExample, build_gist_word_tokenizer, encode_instruction
from backpacklm.gist.masks import CONDITIONS
from backpacklm.gist.savings import quality_vs_compression_png
from backpacklm.gist.train import GistTrainConfig, train_gist
from backpacklm.model.loading import load_model
from backpacklm.worlds.instructions import InstructionWorldConfig, generate_instruction_world, write_instruction_world

KS = (1, 2, 5, 10)
RUNS = [(c, k) for k in KS for c in CONDITIONS]
SPLITS = ("seen", "unseen_phrasing", "unseen_composition")
WORLD = dict(seed=0, tasks=("reverse", "sort", "first", "last", "min", "max", "count"), letters="abcdef", max_len=5,
             composite_fraction=0.3)
# 4 layers: under the gist mask the task reaches the answer through the gist (layer 0 writes it, layer 1 reads it),
# then the lookup into the input; tests/gist/test_ground_truth.py uses the same shape
MODEL = dict(n_embd=32, n_layer=4, n_head=4, n_positions=64)


def train_base(paths, out: Path, args) -> Path:
    """The shared starting point: a language model trained from scratch on the train split with the plain causal
    mask (the prompt layout with one gist token, i.e. pos_control's training), as Mu et al. start from a trained LM."""
    summary = out / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text())["step"] >= args.base_steps):
        train_gist(GistTrainConfig(
            data=str(paths["train"]), out=str(out), arch="transformer", model_overrides=MODEL,
            tokenizer=str(paths["tokenizer"]), gists=1, condition="pos_control", max_steps=args.base_steps,
            batch_size=args.batch_size, lr=args.base_lr, warmup_steps=30, eval_interval=max(args.base_steps // 4, 1),
            seed=args.seed, threads=1, resume=(out / "latest.json").exists(),
        ))
    if json.loads(summary.read_text())["step"] < args.base_steps:  # stopped early (Ctrl-C): resume later
        raise SystemExit(f"{out}: training stopped before step {args.base_steps}; run again to resume")
    return out / "model"


def train_and_evaluate(paths, world, base: Path, out: Path, condition: str, k: int, args) -> dict:
    """Fine-tune the base under `condition` with k gists (or reuse the run) and evaluate it on every split (cached in
    out/world_eval.json)."""
    cached = out / "world_eval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    start = time.process_time()
    summary = out / "summary.json"
    if not (summary.is_file() and json.loads(summary.read_text())["step"] >= args.steps):
        train_gist(GistTrainConfig(
            data=str(paths["train"]), out=str(out), init_from=str(base), gists=k, condition=condition,
            max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=30,
            eval_interval=max(args.steps // 4, 1), seed=args.seed, threads=1, resume=(out / "latest.json").exists(),
        ))
    if json.loads(summary.read_text())["step"] < args.steps:  # stopped early (Ctrl-C): resume later, never evaluate
        raise SystemExit(f"{out}: training stopped before step {args.steps}; run again to resume")
    model, tokenizer = load_model(out / "model")
    model.eval()
    result = {"condition": condition, "k": k, "training": json.loads(summary.read_text()), "rouge_l": {},
              "exact_match": {}, "by_task": {}, "samples": {}}
    for split in SPLITS:
        examples = load_examples(paths[split])
        predictions = predict(model, tokenizer, examples, batch_size=50, max_new_tokens=12)
        references = [e.output for e in examples]
        result["rouge_l"][split] = rouge_l(predictions, references)
        result["exact_match"][split] = exact_match(predictions, references)
        result["by_task"][split] = scores_by_task(predictions, examples, world.truth[split])
        result["samples"][split] = [{"instruction": e.instruction, "input": e.input, "output": e.output,
                                     "prediction": p} for e, p in zip(examples[:5], predictions)]
    result["cpu_seconds"] = time.process_time() - start
    write_json_atomic(cached, result)
    return result


def scores_by_task(predictions: list[str], examples, truth: list[dict]) -> dict[str, float]:
    """ROUGE-L per ground-truth task (compositions named "a+b", and all of them together as "composed")."""
    groups = defaultdict(list)
    for prediction, example, info in zip(predictions, examples, truth):
        groups["+".join(info["tasks"])].append((prediction, example.output))
        if len(info["tasks"]) > 1:
            groups["composed"].append((prediction, example.output))
    return {task: rouge_l(*map(list, zip(*pairs))) for task, pairs in sorted(groups.items())}


def markdown(results: list[dict], instruction_tokens: float) -> str:
    lines = [f"Mean instruction length (seen split, word-level tokens, with `Instruction:` and the newline): "
             f"{instruction_tokens:.1f}.", "",
             "ROUGE-L (exact match in parentheses), points:", "",
             "| condition | k | compression | " + " | ".join(SPLITS) + " |", "|---|---|---|" + "---|" * len(SPLITS)]
    for r in sorted(results, key=lambda r: (CONDITIONS.index(r["condition"]), r["k"])):
        cells = " | ".join(f"{r['rouge_l'][s]:.1f} ({r['exact_match'][s]:.0f})" for s in SPLITS)
        lines.append(f"| {r['condition']} | {r['k']} | {instruction_tokens / r['k']:.1f}x | {cells} |")
    tasks = sorted({t for r in results for t in r["by_task"]["seen"] if "+" not in t})  # single tasks, "composed"
    lines += ["", "Seen split, ROUGE-L per task:", "",
              "| condition | k | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for r in sorted(results, key=lambda r: (CONDITIONS.index(r["condition"]), r["k"])):
        cells = " | ".join(f"{r['by_task']['seen'].get(t, float('nan')):.0f}" for t in tasks)
        lines.append(f"| {r['condition']} | {r['k']} | {cells} |")
    pairs = sorted({t for r in results for t in r["by_task"]["unseen_composition"] if "+" in t})
    lines += ["", "Unseen compositions, ROUGE-L per held-out pair:", "",
              "| condition | k | " + " | ".join(pairs) + " |", "|---|---|" + "---|" * len(pairs)]
    for r in sorted(results, key=lambda r: (CONDITIONS.index(r["condition"]), r["k"])):
        cells = " | ".join(f"{r['by_task']['unseen_composition'].get(t, float('nan')):.0f}" for t in pairs)
        lines.append(f"| {r['condition']} | {r['k']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=1500, help="training steps of the shared base model")
    parser.add_argument("--base-lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=600, help="fine-tuning steps of each (condition, k)")
    parser.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="training seed (the world's seed is 0)")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-eval", type=int, default=100, help="examples per evaluation split")
    parser.add_argument("--work", default="/tmp/gist_world", help="world files and training runs")
    parser.add_argument("--runs", nargs="*", default=None, help="subset, e.g. gist:1 neg_control:1")
    parser.add_argument("--out", default="gist_world", help="results name: bench/results/<out>.json, .md and .png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    world = generate_instruction_world(InstructionWorldConfig(n_train=args.n_train, n_eval=args.n_eval, **WORLD))
    paths = write_instruction_world(world, work / "world")
    paths["tokenizer"] = work / "tokenizer"
    if not (paths["tokenizer"] / "tokenizer.json").is_file():
        examples = [GistExample(**r) for records in world.splits.values() for r in records]
        build_gist_word_tokenizer(examples).save_pretrained(paths["tokenizer"])
    runs = [(c, int(k)) for c, k in (r.split(":") for r in args.runs)] if args.runs else RUNS
    settings = {**vars(args), "model": MODEL, "world": WORLD, "runs": runs}

    base = train_base(paths, work / "base", args)
    results = []
    for condition, k in runs:
        result = train_and_evaluate(paths, world, base, work / f"{condition}-k{k}", condition, k, args)
        results.append(result)
        print(f"{condition} k={k}: " + ", ".join(f"{s} {v:.1f}" for s, v in result["rouge_l"].items()), flush=True)
    if args.runs:  # a share of the work: the collecting invocation writes the results
        return

    _, tokenizer = load_model(work / "gist-k1" / "model")
    seen = load_examples(paths["seen"])
    tokens = sum(len(encode_instruction(tokenizer, e.instruction, 0)) for e in seen) / len(seen)
    table = markdown(results, tokens)
    print(table)
    (RESULTS_DIR / f"{args.out}.md").write_text(table + "\n")
    evaluations = [GistEvaluation(f"{r['condition']}-k{r['k']}", r["condition"], r["k"],
                                  {s: SplitScores(s, args.n_eval, r["rouge_l"][s], r["exact_match"][s]) for s in SPLITS})
                   for r in results]
    quality_vs_compression_png(evaluations, tokens, RESULTS_DIR / f"{args.out}.png", "seen")
    save_result(args.out, {"settings": settings, "results": results, "mean_instruction_tokens": tokens,
                           "cpu_seconds": sum(r["cpu_seconds"] for r in results)})


if __name__ == "__main__":
    main()
