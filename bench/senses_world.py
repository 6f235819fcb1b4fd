"""Claim: on the synthetic sense world (backpacklm.worlds.senses), at a larger scale than the tests, the sense methods
find what the world planted, and beat the Transformer baselines trained in the same run on the same data.

Measured: per polysemous word, how many of each meaning's 4 continuation words are in its senses' top-10 tokens;
debiasing (bias on test prompts and reduction of bias - 1 per method, Backpack vs Transformer); knowledge edits
(p(b) > p(a) after "i bought the {w}" for every product, mean p(a) and p(b) before/after); lexical similarity of
world words (same-topic pairs vs cross-topic pairs); validation loss of both models. The world and the
checkpoints live in a temporary folder, deleted at the end. Writes bench/results/<out>.json and prints the tables.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import print_table, save_result

from backpacklm.senses.debias import debias
from backpacklm.senses.edit import SenseEdit, measure_edit
from backpacklm.senses.lexsim import WordPairs, lexical_similarity
from backpacklm.senses.projection import sense_projection
from backpacklm.worlds.sense_models import train_world_models


def world_pairs(truth: dict) -> WordPairs:
    """Noun pairs: same topic scored 1, different topics 0."""
    from itertools import combinations

    from backpacklm.worlds.senses import TOPICS

    nouns = [(t, n) for t, spec in TOPICS.items() for n in spec["nouns"] + spec["objects"]]
    pairs, scores = [], []
    for (ta, a), (tb, b) in combinations(nouns, 2):
        pairs.append((a, b))
        scores.append(float(ta == tb))
    return WordPairs("world nouns (same topic = 1)", pairs, scores)


def train_models(args, root: Path):
    """Generate the world under root and train a Backpack and a Transformer on it: (truth, models, tokenizer, final
    validation losses, training seconds)."""
    sizes = dict(n_embd=args.n_embd, n_layer=args.n_layer, n_head=4, num_senses=args.num_senses, n_positions=64)
    runs = train_world_models(root, sizes, documents=args.documents, seed=args.seed, max_steps=args.steps,
                              batch_size=32, block_size=32, lr=5e-3, warmup_steps=30, eval_batches=10,
                              threads=args.threads)
    backpack, transformer, tokenizer = runs.load()
    losses = {arch: s["val_loss"] for arch, s in runs.summaries.items()}
    seconds = {arch: round(s["train_seconds"], 1) for arch, s in runs.summaries.items()}
    return runs.truth, {"backpack": backpack, "transformer": transformer}, tokenizer, losses, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--n-embd", type=int, default=96)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--num-senses", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="senses_world")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="senses_world_") as root:  # world files and checkpoints, deleted after
        truth, models, tokenizer, losses, seconds = train_models(args, Path(root))

    coverage = {}
    for word, meanings in truth["polysemous"].items():
        top = set().union(*sense_projection(models["backpack"], tokenizer, word, top=10).top_tokens(10))
        coverage[word] = {t: len(top & set(m["continuations"])) for t, m in meanings.items()}
    pronouns = truth["pronouns"]
    report = debias([models["backpack"], models["transformer"]], tokenizer, list(pronouns["rates_he"]),
                    pronouns["templates"])
    makers, products = truth["facts"]["maker_of"], list(truth["facts"]["maker_of"])
    edits = []
    for i, product in enumerate(products):
        target = makers[products[(i + 1) % len(products)]]
        r = measure_edit(models["backpack"], tokenizer, SenseEdit(product, makers[product], target),
                         [truth["facts"]["template"].format(product)])
        edits.append({"edit": r.edit, **vars(r.prompts[0])})
    lexsim = {arch: lexical_similarity(models[arch], tokenizer, world_pairs(truth)).to_dict() for arch in models}

    print_table(["word", *["meaning %d covered (of 4)" % i for i in (1, 2)]],
                [[w, *[f"{t}: {n}" for t, n in c.items()]] for w, c in coverage.items()])
    print(report.markdown())
    print_table(["edit", "p(a) before", "p(b) before", "p(a) after", "p(b) after"],
                [[f"{e['edit']['word']}: {e['edit']['from']}->{e['edit']['to']}", e["p_source_before"],
                  e["p_target_before"], e["p_source_after"], e["p_target_after"]] for e in edits])
    print_table(["model", "val loss", "train s", "lexsim embedding", "lexsim sim_max"],
                [[a, round(losses[a], 4), seconds[a], lexsim[a]["spearman"].get("embedding"),
                  lexsim[a]["spearman"].get("sim_max", "-")] for a in models])
    save_result(args.out, {"args": vars(args), "val_loss": losses, "train_seconds": seconds,
                           "polysemous_coverage": coverage, "debias": report.to_dict(), "edits": edits,
                           "lexsim": lexsim})


if __name__ == "__main__":
    main()
