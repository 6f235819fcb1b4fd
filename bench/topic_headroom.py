"""Claim: on the synthetic world, where a document's topic is decided by its first content word, no re-weighting of
the context's senses by the method's factors moves that decision 3x: the headroom of sense re-weighting at the
decision points is below the section-6 bar, whatever the quantile bins pick.

For each decision context (a document start "the", and "the {w}" for every polysemous word, where w's two meanings are
open) and each world topic: the next token's mass on the topic's target ids (p0, unsteered); under the method's
strength-3 weights, annealed as in generation (p3); and under the best multipliers a greedy search finds when every
(position, sense) of the context may take 1 or 3.3 (p*, a coordinate ascent, two sweeps, per topic). Writes
bench/results/<out>.json and prints the table.
"""

from __future__ import annotations

import argparse

import torch
from common import print_table, save_result

from backpacklm.model.loading import load_model
from backpacklm.senses.topic import (STRENGTHS, anneal_activation, annealed_multipliers, make_topic,
                                     sense_topic_scores, topic_weights)
from backpacklm.worlds.senses import load_truth


@torch.no_grad()
def topic_mass(model, ids: torch.Tensor, targets: torch.Tensor, multipliers: torch.Tensor | None) -> float:
    """Next-token probability mass on `targets` after ids [1, t], senses scaled by multipliers [1, t, k]."""
    return float(model(ids, sense_multipliers=multipliers, use_cache=False).logits[0, -1].softmax(-1)[targets].sum())


@torch.no_grad()
def greedy_best(model, ids: torch.Tensor, targets: torch.Tensor, factor: float, sweeps: int = 2) -> float:
    """Coordinate ascent over multipliers in {1, factor} per (position, sense), maximizing the target mass."""
    k = model.config.num_senses
    multipliers = torch.ones(1, ids.shape[1], k)
    best = topic_mass(model, ids, targets, None)
    for _ in range(sweeps):
        for j in range(ids.shape[1]):
            for l in range(k):
                trial = multipliers.clone()
                trial[0, j, l] = factor if trial[0, j, l] == 1 else 1.0
                mass = topic_mass(model, ids, targets, trial)
                if mass > best:
                    best, multipliers = mass, trial
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="a world folder (truth.json) the model was trained on")
    parser.add_argument("--backpack", required=True)
    parser.add_argument("--out", default="topic_headroom")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model(args.backpack)
    model = model.float().eval()
    truth = load_truth(args.world)
    embeddings = model.get_input_embeddings().weight
    topics = [make_topic(tokenizer, spec["vocabulary"], model.config.vocab_size, name)
              for name, spec in truth["topics"].items()]
    deltas = {t.name: topic_weights(sense_topic_scores(model, t.target_ids), 3) for t in topics}
    contexts = ["the"] + [f"the {word}" for word in truth["polysemous"]]
    rows, table = [], []
    for context in contexts:
        ids = torch.tensor([tokenizer.encode(context)])
        activation = anneal_activation(model.token_senses(ids), embeddings[ids])
        for topic in topics:
            if context != "the" and topic.name not in truth["polysemous"][context.split()[1]]:
                continue  # a polysemous word: only its two topics are open
            targets = torch.tensor(topic.target_ids)
            delta = deltas[topic.name]
            p0 = topic_mass(model, ids, targets, None)
            p3 = topic_mass(model, ids, targets, annealed_multipliers(delta[ids], activation, float(delta.max())))
            best = greedy_best(model, ids, targets, max(STRENGTHS[3]))
            rows.append({"context": context, "topic": topic.name, "p0": p0, "p3": p3, "p_best": best,
                         "ratio_3": p3 / p0, "ratio_best": best / p0})
            table.append([context, topic.name, p0, p3, best, p3 / p0, best / p0])
    print_table(["context", "topic", "p0", "p3 (spec'd)", "p* (greedy)", "p3 / p0", "p* / p0"], table)
    save_result(args.out, {"args": vars(args), "num_senses": model.config.num_senses, "rows": rows})


if __name__ == "__main__":
    main()
