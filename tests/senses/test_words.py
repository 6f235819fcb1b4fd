"""Words to token ids: leading space where the tokenizer is space-aware, multi-token words, unknown words."""

from __future__ import annotations

import pytest
import torch

from backpacklm.data.tokenizers import build_char_tokenizer, build_word_tokenizer, train_bpe_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.senses.words import single_token_id, word_ids, word_vectors

TEXT = "the doctor said he was tired . the nurse said she was ready . " * 20


def test_bpe_words_take_a_leading_space():
    tok = train_bpe_tokenizer([TEXT], 300)
    ids = word_ids(tok, "doctor")
    assert tok.decode(ids) == " doctor"
    assert word_ids(tok, "doctor", leading_space=False) == tok.encode("doctor")
    assert len(word_ids(tok, "zebra")) > 1 and single_token_id(tok, "zebra") is None


def test_word_tokenizer_is_space_aware_and_rejects_unknown_words():
    tok = build_word_tokenizer([TEXT])
    assert 12 <= len(tok) <= 14  # "the", " the", 9 other " word" pieces (a trailing " " maybe), 2 specials
    assert tok.decode(word_ids(tok, "nurse")) == " nurse" and single_token_id(tok, "nurse") is not None
    assert tok.decode(tok.encode(TEXT[:60])) == TEXT[:60]
    with pytest.raises(BackpackError, match="'zebra' is not in the vocabulary"):
        word_ids(tok, "zebra")
    with pytest.raises(BackpackError, match="outside the model's vocabulary"):
        word_ids(tok, "nurse", vocab_size=3)


def test_char_tokenizer_words_as_written_and_unknown_characters():
    tok = build_char_tokenizer("abc d")
    assert word_ids(tok, "cab") == tok.encode("cab")
    with pytest.raises(BackpackError, match="not in the vocabulary"):
        word_ids(tok, "xyz")
    assert word_ids(tok, " ") == tok.encode(" ")
    with pytest.raises(BackpackError, match="empty word"):
        word_ids(tok, "")


def test_multi_token_words_average_or_first():
    rows = torch.arange(12.0).view(6, 2)
    assert word_vectors(rows, [1, 3], "average").tolist() == [4.0, 5.0]
    assert word_vectors(rows, [1, 3], "first").tolist() == [2.0, 3.0]
    assert word_vectors(lambda index: rows[index] * 2, [1, 3]).tolist() == [8.0, 10.0]
    with pytest.raises(BackpackError, match="average"):
        word_vectors(rows, [1], "last")
