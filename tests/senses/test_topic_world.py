"""Section-6 ground truth for topic control: on the synthetic world, sense re-weighting at strength 3 must raise each
topic's in-vocabulary share at least 3x over strength 0, with perplexity under the unsteered model rising < 2x."""

from __future__ import annotations

import pytest

from backpacklm.senses.steering import SamplingSettings, evaluate_steering
from backpacklm.senses.topic import make_topic

# 96 per prompt: a run holds only a few documents of each topic, so with 24 the ratios swung x0.65-2.28 over seeds
SAMPLING = SamplingSettings(length=30, samples=96, top_k=0, seed=0)
PROMPTS = ["", "the"]  # document starts: the topic is still open


def world_topic_control(world_models):
    backpack, tokenizer, truth = world_models.backpack, world_models.tokenizer, world_models.truth
    topics = [make_topic(tokenizer, spec["vocabulary"], backpack.config.vocab_size, name)
              for name, spec in truth["topics"].items()]
    report = evaluate_steering({"sense": backpack}, tokenizer, topics, [0, 3], PROMPTS, SAMPLING,
                               reference_model=backpack)
    by = {(r.topic, r.strength): r for r in report.rows}
    return {t.name: (by[t.name, 0], by[t.name, 3]) for t in topics}


@pytest.mark.xfail(strict=True, reason="measured below the section-6 bar on the fixture world (README, Topic control): "
                   "at a document start even the best 1/3.3 multipliers found move a topic's next-token mass only "
                   "x1.0-1.13 (bench/topic_headroom.py on the 900-step fixture), so the spec'd re-weighting cannot "
                   "reach 3x; measured x0.77-1.31 with these settings")
def test_world_topic_control(world_models):
    measured = world_topic_control(world_models)
    lines = [f"{name}: in-vocab {base.in_vocab_share:.3f} -> {steered.in_vocab_share:.3f}, "
             f"perplexity {base.perplexity:.2f} -> {steered.perplexity:.2f}" for name, (base, steered) in measured.items()]
    print("\n".join(lines))
    for name, (base, steered) in measured.items():
        assert steered.in_vocab_share >= 3 * base.in_vocab_share, lines
        assert steered.perplexity < 2 * base.perplexity, lines
