"""Built-in in-context tasks: ground truth, determinism, the corpus, and a small model trained here that solves one."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from backpacklm.errors import BackpackError
from backpacklm.heads.gates import masking
from backpacklm.heads.tasks import evaluate_task, few_shot_prompts
from backpacklm.worlds.icl_tasks import TASKS, builtin_task, icl_corpus


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_are_seeded_and_well_formed(name):
    task = builtin_task(name, n=200, seed=4)
    again = builtin_task(name, n=200, seed=4)
    assert task.examples == again.examples and task.train == again.train
    assert task.examples != builtin_task(name, n=200, seed=5).examples
    for ex in task.examples + task.train:
        assert len(ex.choices) == len(set(ex.choices)) == 4 and ex.choices[ex.gold] == ex.answer
    gold_positions = Counter(ex.gold for ex in task.examples)
    assert len(gold_positions) == 4 and min(gold_positions.values()) > 25  # gold not always in one slot
    assert task.chance == 0.25


def test_copy_ground_truth():
    for ex in builtin_task("copy", n=100, seed=0).examples:
        seq, start = ex.context.split("|")
        assert len(set(seq)) == len(seq) == 6 and seq.startswith(start) and 1 <= len(start) < 6
        assert ex.answer == seq[len(start)]
        assert all(c in seq for c in ex.choices)  # distractors come from the prompt itself


def test_map_and_pairs_follow_one_rule_per_task():
    task = builtin_task("map", n=100, seed=0)
    code = {}
    for ex in task.examples + task.train:
        assert code.setdefault(ex.context[0], ex.answer) == ex.answer  # one digit per letter, across all items
    assert len(code) == 8 and len(set(code.values())) == 8
    partner = {}
    for ex in (pairs := builtin_task("pairs", n=100, seed=0)).examples + pairs.train:
        assert partner.setdefault(ex.context[0], ex.answer) == ex.answer
    assert all(partner[partner[a]] == a != partner[a] for a in partner)  # symmetric, like antonyms


def test_corpus_is_seeded_and_covers_the_tasks():
    text = icl_corpus(n_prompts=150, seed=1)
    assert text == icl_corpus(n_prompts=150, seed=1) and text != icl_corpus(n_prompts=150, seed=2)
    prompts = text.strip().split("\n\n")
    assert len(prompts) == 150
    for prompt in prompts:
        lines = prompt.split("\n")
        if re.fullmatch(r"[a-h]>\d", lines[0]):  # a map prompt: one code throughout
            assert len({line[0]: line[2] for line in lines}) == len({line for line in lines})
    for name in TASKS:
        task = builtin_task(name, n=50, seed=0)
        assert set("".join(few_shot_prompts(task, 4, 0)) + "".join(ex.answer for ex in task.examples)) <= set(text)
    with pytest.raises(BackpackError, match="unknown built-in task"):
        builtin_task("nope", 5, 0)


def test_trained_model_solves_copy_with_its_heads(copy_task_model):
    model, tok = copy_task_model
    task = builtin_task("copy", n=100, seed=1)
    result = evaluate_task(model, tok, task, k=2, seed=0, batch_size=25)
    assert result.chance == 0.25 and result.accuracy > 0.8  # measured 1.00 (seeds 0-3)
    with masking(model, head_mask=torch.zeros(model.config.n_layer, model.config.n_head)):
        ablated = evaluate_task(model, tok, task, k=2, seed=0, batch_size=25).accuracy
    assert ablated < 0.45  # without its heads the model cannot read the context: near chance
