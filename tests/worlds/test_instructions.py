"""The instruction world: deterministic, splits disjoint as documented, every output correct per ground truth."""

from __future__ import annotations

import json

import pytest
from tokenizers import pre_tokenizers

from backpacklm.data.tokenizers import load_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.gist.layout import GistExample, encode_example, gist_token_id
from backpacklm.worlds.instructions import (
    CONNECTIVES,
    LENGTH_MATCHED,
    PHRASINGS,
    PREAMBLES,
    InstructionWorldConfig,
    generate_instruction_world,
)
from tests.helpers import run_cli

SMALL = InstructionWorldConfig(seed=3, n_train=600, n_eval=80)


def _expected(letters: list[str], tasks: list[str], params: list[dict]) -> str:
    """An independent statement of each task, applied in order."""
    for task, p in zip(tasks, params):
        letters = {
            "reverse": lambda s: list(reversed(s)),
            "sort": lambda s: sorted(s),
            "repeat": lambda s: s * 2,
            "every_second": lambda s: [x for i, x in enumerate(s) if i % 2 == 0],
            "replace": lambda s: [p["dst"] if x == p["src"] else x for x in s],
            "count": lambda s: [str(len(s))],
            "first": lambda s: s[:1],
            "second": lambda s: s[1:2],
            "third": lambda s: s[2:3],
            "last": lambda s: s[-1:],
            "min": lambda s: [sorted(s)[0]],
            "max": lambda s: [sorted(s)[-1]],
        }[task](letters)
    return " ".join(letters)


@pytest.fixture(scope="module")
def world():
    return generate_instruction_world(SMALL)


def test_deterministic_in_seed(world):
    again = generate_instruction_world(InstructionWorldConfig(seed=3, n_train=600, n_eval=80))
    assert again.splits == world.splits and again.truth == world.truth
    other = generate_instruction_world(InstructionWorldConfig(seed=4, n_train=600, n_eval=80))
    assert other.splits["train"] != world.splits["train"]


def test_outputs_and_instructions_match_ground_truth(world):
    for split, records in world.splits.items():
        assert len(records) == (SMALL.n_train if split == "train" else SMALL.n_eval)
        for record, truth in zip(records, world.truth[split]):
            letters = record["input"].split(" ")
            assert len(set(letters)) == len(letters) and SMALL.min_len <= len(letters) <= SMALL.max_len
            assert record["output"] == _expected(letters, truth["tasks"], truth["params"])
            parts = [PHRASINGS[t][i].format(**p) for t, i, p in zip(truth["tasks"], truth["phrasings"], truth["params"])]
            text = parts[0] if len(parts) == 1 else CONNECTIVES[truth["connective"]].format(a=parts[0], b=parts[1])
            if truth["long"]:
                assert any(record["instruction"] == pre.format(instruction=text) for pre in PREAMBLES)
            else:
                assert record["instruction"] == text[0].upper() + text[1:] + "."


def test_splits_disjoint_in_phrasing_and_composition(world):
    seen_pairs = {tuple(p) for p in world.seen_compositions}
    unseen_pairs = {tuple(p) for p in world.unseen_compositions}
    assert seen_pairs and unseen_pairs and not seen_pairs & unseen_pairs
    for task in SMALL.tasks:  # every task is composed in train; only some pairings are new
        assert any(task in p for p in seen_pairs)
        assert set(world.seen_phrasings[task]).isdisjoint(world.unseen_phrasings[task])
        assert sorted(world.seen_phrasings[task] + world.unseen_phrasings[task]) == list(range(len(PHRASINGS[task])))
    for split in ["train", "seen", "long", "unseen_phrasing", "unseen_composition"]:
        for truth in world.truth[split]:
            pair = tuple(truth["tasks"])
            uses_unseen = [i in world.unseen_phrasings[t] for t, i in zip(truth["tasks"], truth["phrasings"])]
            if split == "unseen_phrasing":
                assert any(uses_unseen) and (len(pair) == 1 or pair in seen_pairs)
            elif split == "unseen_composition":
                assert pair in unseen_pairs and not any(uses_unseen)
            else:
                assert not any(uses_unseen) and (len(pair) == 1 or pair in seen_pairs)
    assert {tuple(t["tasks"]) for t in world.truth["unseen_composition"]} == unseen_pairs  # all held-out pairs used
    train_keys = {(r["instruction"], r["input"]) for r in world.splits["train"]}
    assert not any((r["instruction"], r["input"]) in train_keys for r in world.splits["seen"])
    train_instructions = {r["instruction"] for r in world.splits["train"]}
    for split in ["unseen_phrasing", "unseen_composition", "long"]:
        assert not any(r["instruction"] in train_instructions for r in world.splits[split])


def test_every_task_and_composites_present(world):
    tasks = [t for truth in world.truth["train"] for t in truth["tasks"]]
    assert set(tasks) == set(SMALL.tasks)
    composite = sum(len(t["tasks"]) == 2 for t in world.truth["train"]) / SMALL.n_train
    assert abs(composite - SMALL.composite_fraction) < 0.06


def test_one_symbol_tasks_have_length_matched_phrasings():
    for i in range(len(PHRASINGS["count"])):  # same characters per phrasing id: char models see the same positions
        assert len({len(PHRASINGS[task][i]) for task in LENGTH_MATCHED}) == 1, i
    # and four words each: word-level models see one instruction length whatever the task and phrasing
    assert {len(PHRASINGS[task][i].split()) for task in LENGTH_MATCHED for i in range(5)} == {4}


def test_long_instructions_are_long(world):
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False)  # the word pieces of build_word_tokenizer
    assert min(len(pieces.pre_tokenize_str(r["instruction"])) for r in world.splits["long"]) >= 50
    assert max(len(r["instruction"]) for r in world.splits["long"]) <= 400  # char-level prompts fit 512 positions


def test_bad_config_is_one_error():
    with pytest.raises(BackpackError, match="unknown task"):
        generate_instruction_world(InstructionWorldConfig(tasks=("reverse", "shout")))
    with pytest.raises(BackpackError, match="max_len"):
        generate_instruction_world(InstructionWorldConfig(letters="abc", max_len=5))
    with pytest.raises(BackpackError, match="min_len >= 3"):
        generate_instruction_world(InstructionWorldConfig(tasks=("third", "count"), min_len=2))


def test_cli_writes_alpaca_json_and_ground_truth(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "world", "instructions", "--out", tmp_path / "w", "--seed", "3", "--n-train", "600", "--n-eval", "80"
    )
    assert code == 0, err
    world = generate_instruction_world(SMALL)
    for split, records in world.splits.items():
        assert json.loads((tmp_path / "w" / f"{split}.json").read_text()) == records
    truth = json.loads((tmp_path / "w" / "ground_truth.json").read_text())
    assert truth["examples"]["seen"] == world.truth["seen"] and truth["config"]["seed"] == 3
    tokenizer = load_tokenizer(tmp_path / "w" / "tokenizer")  # word-level, every split's words known
    record = world.splits["long"][0]
    ids = encode_example(tokenizer, GistExample(**record), 1).input_ids
    assert tokenizer.unk_token_id not in ids and ids.count(gist_token_id(tokenizer)) == 1
    code, out, err = run_cli(capsys, "world", "instructions", "--out", tmp_path / "x", "--tasks", "reverse,shout")
    assert code == 2 and err.strip().count("\n") == 0 and "unknown task(s) shout" in err
