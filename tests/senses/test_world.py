"""The synthetic sense world: deterministic, with the planted structure its truth.json states."""

from __future__ import annotations

import re
from collections import Counter

from backpacklm.worlds.senses import generate_world, prepare_world, world_words
from tests.helpers import run_cli


def test_world_is_deterministic_and_states_its_structure(tmp_path):
    truth = generate_world(tmp_path / "a", seed=3, n_documents=1500)
    generate_world(tmp_path / "b", seed=3, n_documents=1500)
    generate_world(tmp_path / "c", seed=4, n_documents=1500)
    text = (tmp_path / "a" / "world.txt").read_bytes()
    assert text == (tmp_path / "b" / "world.txt").read_bytes() != (tmp_path / "c" / "world.txt").read_bytes()
    assert len(text.decode().splitlines()) == 1500

    assert len(truth["topics"]) >= 4
    vocabularies = [set(t["vocabulary"]) for t in truth["topics"].values()]
    assert sum(map(len, vocabularies)) == len(set().union(*vocabularies))  # each word in one topic only
    assert len(truth["polysemous"]) >= 4 and all(len(m) == 2 for m in truth["polysemous"].values())
    rates = truth["pronouns"]["rates_he"]
    assert len(rates) >= 8 and max(abs(r - 0.5) for r in rates.values()) >= 0.4 and 0.5 in rates.values()

    # the planted rates are the corpus's: P(he | profession) within sampling error
    counts = Counter(re.findall(r"the (\w+) \w+ (he|she) was", text.decode()))
    for profession, rate in rates.items():
        n = counts[(profession, "he")] + counts[(profession, "she")]
        assert n > 100 and abs(counts[(profession, "he")] / n - rate) < 0.1, profession
    # a polysemous word is followed by its meaning's continuations, inside that meaning's topic documents
    for word, meanings in truth["polysemous"].items():
        for topic, meaning in meanings.items():
            other = set(truth["topics"][topic]["vocabulary"]) - set(meaning["continuations"])
            lines = [l for l in text.decode().splitlines() if f" {word} {meaning['continuations'][0]} " in f" {l}"]
            assert lines and all(any(w in l.split() for w in other) for l in lines[:20])


def test_prepared_world_has_one_token_per_word(tmp_path):
    truth = generate_world(tmp_path / "w", seed=0, n_documents=300)
    meta = prepare_world(tmp_path / "w", tmp_path / "w" / "data")  # raises if a world word is split
    assert meta["tokenizer_kind"] == "word" and meta["vocab_size"] < 250
    assert len(world_words(truth)) > 100


def test_cli_world(tmp_path, capsys):
    code, out, err = run_cli(capsys, "world", "senses", "--out", tmp_path / "w", "--documents", "600", "--prepare")
    assert code == 0, err
    assert (tmp_path / "w" / "truth.json").is_file() and (tmp_path / "w" / "data" / "train.bin").is_file()
    code, out, err = run_cli(capsys, "world", "senses", "--out", tmp_path / "x", "--documents", "3")
    assert code == 2 and err.strip().count("\n") == 0 and "at least 10 documents" in err
