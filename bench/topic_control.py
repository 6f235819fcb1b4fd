"""Claim: topic control by sense re-weighting (Backpack) against PPLM-BoW (Transformer with the same trunk), side by
side: method x strength -> success, topic in-vocabulary share, perplexity under each method's unsteered model, MAUVE,
seconds per sample.

Part 1, the synthetic world: its 4 topic vocabularies (truth.json), prompts at document starts, MAUVE against
held-out world text cut like the generations (from a document start, the prompt's tokens and `--length` more),
with features from the Transformer. Models: trained here (`--documents/--steps/...`) or
reused (`--world DIR --backpack DIR --transformer DIR`); a world and models trained here live in a temporary folder,
deleted when the part ends. Also reports the section-6 check per topic (strength 3 vs 0: in-vocab share ratio >= 3,
perplexity ratio < 2).
Part 2, Shakespeare (when `--shakespeare-backpack/--shakespeare-transformer` exist): PPLM's military and religion
lists from ../shared/data/pplm_bow. Writes bench/results/<out>.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import DEFAULT_DATA_DIR, print_table, save_result

from backpacklm.model.loading import load_model
from backpacklm.senses.pplm import PPLMSettings
from backpacklm.senses.steering import SamplingSettings, evaluate_steering
from backpacklm.senses.topic import load_topic, make_topic
from backpacklm.worlds.sense_models import train_world_models
from backpacklm.worlds.senses import load_truth


def train_world(args, root: Path) -> tuple[Path, Path, Path]:
    """Generate the world under root and train a Backpack and a Transformer on it: their three folders."""
    sizes = dict(n_embd=args.n_embd, n_layer=args.n_layer, n_head=4, num_senses=args.num_senses, n_positions=128)
    runs = train_world_models(root, sizes, documents=args.documents, seed=args.seed, max_steps=args.steps,
                              batch_size=16, block_size=64, lr=3e-3, warmup_steps=30, threads=args.threads,
                              progress=True)
    return runs.corpus_dir, runs.backpack_dir, runs.transformer_dir


def summary_rows(report) -> list[list]:
    return [[s["method"], s["strength"], s["setting"], s["success"], s["in_vocab_share"], s["perplexity"],
             s["mauve"] if s["mauve"] is not None else "-", s["seconds_per_sample"]] for s in report.summary()]


HEADER = ["method", "strength", "setting", "success", "in-vocab share", "perplexity", "MAUVE", "s/sample"]


def world_part(args) -> dict:
    if args.world:
        return world_report(args, Path(args.world), Path(args.backpack), Path(args.transformer))
    with tempfile.TemporaryDirectory(prefix="topic_control_") as root:
        return world_report(args, *train_world(args, Path(root)), trained_here=True)


WINDOW_DOCUMENTS = 4  # documents joined per window: always more tokens than a generation's


def reference_windows(lines: list[str], tokenizer, n: int, length: int) -> list[str]:
    """n held-out texts from the end of `lines` (one document each), shaped like the generations they are compared
    with: from a document start, the corpus stream (documents joined by newlines, as in training) cut to the
    generations' tokens, the prompt's included: alternately <|endoftext|> + `length` tokens (prompt "") and
    `length` + 1 tokens (prompt "the")."""
    lines = lines[-(n + WINDOW_DOCUMENTS - 1):]
    texts = []
    for i in range(n):
        ids = tokenizer.encode("\n".join(lines[i:i + WINDOW_DOCUMENTS]), add_special_tokens=False)
        ids = [tokenizer.eos_token_id] + ids[:length] if i % 2 == 0 else ids[:length + 1]
        texts.append(tokenizer.decode(ids))
    return texts


def world_report(args, world: Path, backpack_dir: Path, transformer_dir: Path, trained_here: bool = False) -> dict:
    backpack, tokenizer = load_model(backpack_dir)
    transformer, _ = load_model(transformer_dir)
    truth = load_truth(world)
    topics = [make_topic(tokenizer, spec["vocabulary"], backpack.config.vocab_size, name)
              for name, spec in truth["topics"].items()]
    lines = (world / "world.txt").read_text(encoding="utf-8").splitlines()
    references = reference_windows(lines, tokenizer, args.references, args.length)
    sampling = SamplingSettings(length=args.length, samples=args.samples, top_k=0, seed=args.seed)
    started = time.perf_counter()
    report = evaluate_steering({"sense": backpack, "pplm": transformer}, tokenizer, topics, [0, 1, 2, 3], ["", "the"],
                               sampling, PPLMSettings(), args.world_step_sizes, mauve_model=transformer,
                               mauve_references=references)
    by = {(r.method, r.topic, r.strength): r for r in report.rows}
    checks = {}
    for method in ("sense", "pplm"):
        for t in topics:
            base, steered = by[method, t.name, 0], by[method, t.name, 3]
            if base.in_vocab_share:
                ratio = steered.in_vocab_share / base.in_vocab_share
            else:  # 0 -> 0 is no effect (NaN, fails), not an infinite gain
                ratio = float("inf") if steered.in_vocab_share else float("nan")
            checks[f"{method}/{t.name}"] = {
                "in_vocab_0": base.in_vocab_share, "in_vocab_3": steered.in_vocab_share, "ratio": ratio,
                "perplexity_ratio": steered.perplexity / base.perplexity,
                "passes": ratio >= 3 and steered.perplexity < 2 * base.perplexity}
    print("\nworld: method x strength (mean over 4 topics)")
    print_table(HEADER, summary_rows(report))
    print("\nworld: section-6 check (strength 3 vs 0)")
    print_table(["method/topic", "in-vocab 0", "in-vocab 3", "ratio (>= 3)", "ppl ratio (< 2)", "passes"],
                [[k, v["in_vocab_0"], v["in_vocab_3"], v["ratio"], v["perplexity_ratio"], str(v["passes"])]
                 for k, v in checks.items()])
    where = {"backpack": "trained in this run (--documents/--steps/...), folder deleted",
             "transformer": "trained in this run, folder deleted"} if trained_here else \
        {"backpack": str(backpack_dir), "transformer": str(transformer_dir)}
    return {"models": {**where,
                       "backpack_config": {k: getattr(backpack.config, k) for k in ("n_embd", "n_layer", "num_senses", "vocab_size")}},
            "seconds": time.perf_counter() - started, "report": report.to_dict(), "check": checks}


def shakespeare_part(args) -> dict | None:
    if not (Path(args.shakespeare_backpack).exists() and Path(args.shakespeare_transformer).exists()):
        print("\nshakespeare: models not found, skipped")
        return None
    backpack, tokenizer = load_model(args.shakespeare_backpack)
    transformer, _ = load_model(args.shakespeare_transformer)
    bow = Path(args.data) / "pplm_bow"
    topics = [load_topic(bow / f"{name}.txt", tokenizer, backpack.config.vocab_size) for name in ("military", "religion")]
    sampling = SamplingSettings(length=args.shakespeare_length, samples=args.shakespeare_samples, top_k=10, seed=args.seed)
    report = evaluate_steering({"sense": backpack, "pplm": transformer}, tokenizer, topics, [0, 1, 2, 3],
                               ["My lord,", "The king", "Now"], sampling, PPLMSettings(), args.shakespeare_step_sizes)
    print("\nshakespeare: method x strength (mean over military, religion)")
    print_table(HEADER, summary_rows(report))
    steps = {name: json.loads((Path(path) / "summary.json").read_text()) if (Path(path) / "summary.json").exists() else None
             for name, path in (("backpack", args.shakespeare_backpack), ("transformer", args.shakespeare_transformer))}
    return {"models": {"backpack": args.shakespeare_backpack, "transformer": args.shakespeare_transformer,
                       "training_summaries": steps}, "report": report.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=None, help="reuse a world folder (with --backpack, --transformer)")
    parser.add_argument("--backpack", default=None)
    parser.add_argument("--transformer", default=None)
    parser.add_argument("--documents", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--num-senses", type=int, default=8)
    parser.add_argument("--samples", type=int, default=32, help="samples per prompt")
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--references", type=int, default=200, help="held-out world texts for MAUVE")
    parser.add_argument("--world-step-sizes", type=float, nargs=4, default=[0.0, 0.1, 0.3, 1.0],
                        help="PPLM step sizes at strengths 0..3 on the world (tiny models need larger steps)")
    parser.add_argument("--shakespeare-backpack", default="runs/shakespeare-bpe-backpack")
    parser.add_argument("--shakespeare-transformer", default="runs/shakespeare-bpe-transformer")
    parser.add_argument("--shakespeare-step-sizes", type=float, nargs=4, default=[0.0, 0.01, 0.02, 0.03])
    parser.add_argument("--part", choices=["world", "shakespeare", "both"], default="both")
    parser.add_argument("--shakespeare-samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("--shakespeare-length", type=int, default=30)
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="topic_control")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part != "shakespeare" and args.world and not (args.backpack and args.transformer):
        parser.error("--world needs --backpack and --transformer")
    result = {"args": vars(args)}
    if args.part in ("world", "both"):
        result["world"] = world_part(args)
        save_result(args.out, result)  # kept even if the Shakespeare part is interrupted
    if args.part in ("shakespeare", "both"):
        result["shakespeare"] = shakespeare_part(args)
        save_result(args.out, result)


if __name__ == "__main__":
    main()
