"""Lexical similarity: every file format parses; planted vectors give Spearman 1.0; malformed files are one-line
errors naming file and line."""

from __future__ import annotations

import math

import pytest
import torch

from backpacklm.errors import BackpackError
from backpacklm.senses.lexsim import (
    WordPairs, lexical_similarity, load_men, load_pairs, load_rg65, load_simlex, load_simverb, load_ws353,
    markdown_table,
)
from tests.helpers import run_cli

FORMATS = {
    "simlex_original.txt": ("word1\tword2\tPOS\tSimLex999\tconc(w1)\n old\tnew\tA\t1.58\t2.72\nsmart\tintelligent\tA\t9.2\t1.75\n",
                            load_simlex),
    "simlex_3col.txt": ("old\tnew\t1.58\nsmart\tintelligent\t9.2\n", load_simlex),
    "simverb.txt": ("take\tremove\tV\t6.81\tANTONYMS\r\nwalk\ttrail\tV\t4.81\tCOHYPONYMS\r\n", load_simverb),
    "rg65.txt": ("cord;smile;0.02\r\nrooster;voyage;0.04\r\n", load_rg65),
    "ws353.csv": ("Word 1,Word 2,Human (mean)\nlove,sex,6.77\ntiger,cat,7.35\n", load_ws353),
    "ws353_3col.txt": ("love\tsex\t6.77\r\ntiger\tcat\t7.35\r\n", load_ws353),
    "men_natural.txt": ("sun sunlight 50.000000\nautomobile car 50.000000\n", load_men),
    "men_lemma.txt": ("sun-n sunlight-n 50.000000\nbakery-n bread-n 45.000000\n", load_men),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_parses(tmp_path, name):
    text, loader = FORMATS[name]
    path = tmp_path / name
    path.write_bytes(text.encode())
    gold = loader(path)
    assert len(gold.pairs) == 2 and all(isinstance(s, float) for s in gold.scores)
    assert all(w == w.strip() and "-n" not in w and w for pair in gold.pairs for w in pair)
    first = {"simlex_original.txt": ("old", "new", 1.58), "simverb.txt": ("take", "remove", 6.81),
             "men_lemma.txt": ("sun", "sunlight", 50.0), "ws353.csv": ("love", "sex", 6.77)}
    if name in first:
        assert (*gold.pairs[0], gold.scores[0]) == first[name]


@pytest.mark.parametrize("text, line", [("a\tb\t1.0\nc\td\n", 2), ("a\tb\t1.0\nc\td\tmany\n", 2),
                                        ("w1 w2 w3 w4\ne f g h\n", 2), ("a\tb\t1.0\nc\td\tnan\n", 2),
                                        ("a;b;inf\nc;d;1\n", 1), ("a,b,-Infinity\n", 1),
                                        ("a\tb\t5,5\nc\td\t1\n", 1)])  # a decimal comma, not a header
def test_malformed_file_names_file_and_line(tmp_path, text, line):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(BackpackError, match=rf"bad.txt:{line}: "):
        load_pairs(path)


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(BackpackError, match="no word pairs"):
        load_pairs(tmp_path / "empty.txt")


def planted(n: int = 12, k: int = 3, d: int = 8):
    """Pairs (a_i, b_i) whose vectors' cosine rises with the gold score i, in E and in every sense."""
    e1, e2 = torch.eye(d)[0], torch.eye(d)[1]
    vectors = {}
    for i in range(n):
        angle = math.pi / 2 * (1 - i / n)  # higher score, smaller angle
        b = math.cos(angle) * e1 + math.sin(angle) * e2
        vectors[f"a{i}"] = (e1, e1.repeat(k, 1))
        vectors[f"b{i}"] = (b, b.repeat(k, 1))
    gold = WordPairs("planted", [(f"a{i}", f"b{i}") for i in range(n)] + [("a0", "unknown")],
                     [float(i) for i in range(n)] + [5.0])
    return gold, vectors.get


def test_planted_vectors_give_spearman_one():
    gold, vectors = planted()
    result = lexical_similarity(None, None, gold, vectors=vectors)
    assert result.n_pairs == 13 and result.n_covered == 12 and result.skipped_words == ["unknown"]
    methods = {"embedding", "senses_concat", "sim_min", "sim_max", "kxk_min", "kxk_max", "sense_0", "sense_1", "sense_2"}
    assert set(result.spearman) == methods
    assert all(abs(rho - 1.0) < 1e-9 for rho in result.spearman.values()), result.spearman
    assert "| planted | 12/13 | 100.0 |" in markdown_table([result])


def test_too_few_covered_pairs_give_no_correlation():
    gold, vectors = planted(n=9)  # 9 covered pairs: below MIN_PAIRS
    result = lexical_similarity(None, None, gold, vectors=vectors)
    assert result.n_covered == 9 and result.spearman == {}
    assert "| planted | 9/10 |" in markdown_table([result, lexical_similarity(None, None, planted()[0],
                                                                                vectors=planted()[1])])


def test_cli_malformed_similarity_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tb\t1\nc\td\n")
    code, out, err = run_cli(capsys, "lexsim", "--model", tmp_path / "no_model", "--data", bad, "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bad.txt:2:" in err, err
