import json
import random
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from backpacklm.data import tokenizers as tk
from backpacklm.data.tokenizers import (
    EOT,
    build_char_tokenizer,
    build_word_tokenizer,
    encode_ordinary,
    encode_strict,
    is_char_tokenizer,
    load_tokenizer,
    tokenizer_difference,
    train_bpe_tokenizer,
)
from backpacklm.errors import BackpackError

GPT2_FILES = Path(__file__).resolve().parents[2].parent / "shared/data/gpt2_bpe"
needs_gpt2 = pytest.mark.skipif(not (GPT2_FILES / "encoder.json").is_file(), reason=f"{GPT2_FILES} missing")

TEXT = "First Citizen:\nBefore we proceed any further,  hear me speak.\n\n\tAll:\r\nSpeak, speak. Ça va? 😀\n"
WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def english_like(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else "") for _ in range(n_words))


def test_char_vocab_is_sorted_characters_then_eot():
    tok = build_char_tokenizer(TEXT)
    chars = sorted(set(TEXT))
    assert isinstance(tok, PreTrainedTokenizerFast) and is_char_tokenizer(tok)
    assert len(tok) == len(chars) + 1 == 37
    assert [tok.convert_tokens_to_ids(ch) for ch in chars] == list(range(len(chars)))
    assert tok.eos_token == tok.bos_token == EOT and tok.eos_token_id == len(chars)


def test_char_round_trip_exact_with_whitespace():
    tok = build_char_tokenizer(TEXT)
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT)  # one id per character, no special tokens added
    assert tok.decode(ids) == TEXT
    rng = random.Random(0)
    ids = [rng.randrange(len(tok)) for _ in range(500)]  # includes the eot id
    assert tok.encode(tok.decode(ids)) == ids


def test_char_tokenizer_survives_save_and_auto_load(tmp_path):
    tok = build_char_tokenizer(TEXT)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert is_char_tokenizer(loaded) and loaded.eos_token_id == tok.eos_token_id
    assert loaded.encode(TEXT) == tok.encode(TEXT) and loaded.decode(tok.encode(TEXT)) == TEXT
    assert load_tokenizer(tmp_path).encode(TEXT) == tok.encode(TEXT)


def test_encode_strict_names_unknown_characters():
    tok = build_char_tokenizer("abc \n")
    assert encode_strict(tok, "cab \n") == [4, 2, 3, 1, 0]
    assert encode_strict(tok, f"ab{EOT}") == [2, 3, 5]
    with pytest.raises(BackpackError, match=r"2 character\(s\) not in the tokenizer's vocabulary: 'x' 'é'"):
        encode_strict(tok, "abxcé x")


def test_encode_ordinary_char_matches_encode_and_reads_eot_as_text():
    tok = build_char_tokenizer(TEXT + EOT)
    [ids] = encode_ordinary(tok, [TEXT])
    assert ids.tolist() == tok.encode(TEXT)
    [ids] = encode_ordinary(tok, [EOT])
    assert len(ids) == len(EOT) and tok.eos_token_id not in ids.tolist()
    with pytest.raises(BackpackError, match="'Z'"):
        encode_ordinary(tok, ["Zebra"])


def test_bpe_reaches_vocab_size_and_round_trips():
    tok = train_bpe_tokenizer([english_like(3000, seed) for seed in range(3)], vocab_size=300)
    assert len(tok) == 300 and tok.convert_ids_to_tokens(0) == EOT and tok.eos_token_id == 0
    assert not is_char_tokenizer(tok)
    text = "the  end\n\nof it: naïve ☃ text\twith bytes never seen"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(tok.encode("the of and")) < len("the of and")  # merges learned
    assert encode_ordinary(tok, [text])[0].tolist() == ids
    assert encode_strict(tok, text) == ids  # nothing is unknown to byte-level BPE


def test_bpe_rejects_vocab_smaller_than_bytes():
    with pytest.raises(BackpackError, match="at least 257"):
        train_bpe_tokenizer(["abc"], vocab_size=100)


def test_bpe_encode_ordinary_reads_eot_as_text():
    tok = train_bpe_tokenizer([english_like(500)], vocab_size=280)
    [ids] = encode_ordinary(tok, [f"the{EOT}end"])
    assert 0 not in ids.tolist()
    assert tok.decode(ids) == f"the{EOT}end"
    assert tok.encode(f"the{EOT}end").count(0) == 1  # plain encode() still matches the special token


def test_vocab_json_and_merges_txt_folder(tmp_path):
    tok = train_bpe_tokenizer([english_like(2000)], vocab_size=290)
    tok.backend_tokenizer.model.save(str(tmp_path))  # writes vocab.json + merges.txt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    loaded = load_tokenizer(tmp_path)
    text = "that was not the one\nwith it"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.eos_token_id == 0 and len(loaded) == 290


@needs_gpt2
@pytest.mark.parametrize("names", [("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")])
def test_gpt2_files_give_gpt2_ids(tmp_path, names):
    shutil.copy(GPT2_FILES / "encoder.json", tmp_path / names[0])
    shutil.copy(GPT2_FILES / "vocab.bpe", tmp_path / names[1])
    tok = load_tokenizer(tmp_path)
    assert len(tok) == 50257 and tok.eos_token == EOT and tok.eos_token_id == 50256
    assert tok.encode(" hello world") == [23748, 995]
    assert tok.encode("hello world") == [31373, 995]
    assert tok.decode(tok.encode(" Hello,\n\n  world!")) == " Hello,\n\n  world!"
    tok.save_pretrained(tmp_path / "hf")
    assert load_tokenizer(tmp_path / "hf").encode(" hello world") == [23748, 995]


def test_bare_tokenizer_json_gets_eot_as_eos(tmp_path):
    tok = train_bpe_tokenizer([english_like(500)], vocab_size=270)
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.eos_token == EOT and loaded.eos_token_id == 0 and len(loaded) == 270


def test_load_tokenizer_errors(tmp_path, monkeypatch):
    with pytest.raises(BackpackError, match="unknown tokenizer 'nope'"):
        load_tokenizer("nope")
    with pytest.raises(BackpackError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "encoder.json").write_text(json.dumps(["not", "a", "dict"]))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    with pytest.raises(BackpackError, match="not a BPE vocabulary"):
        load_tokenizer(tmp_path)

    def offline(name):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr(tk.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(BackpackError, match=r"^could not load tokenizer 'gpt2' .*connect[^\n]*$"):
        load_tokenizer("gpt2")


def test_tokenizer_difference_survives_save_and_load(tmp_path):
    for name, tok in [("char", build_char_tokenizer(TEXT)), ("word", build_word_tokenizer([TEXT])),
                      ("bpe", train_bpe_tokenizer([english_like(500)], vocab_size=270))]:
        tok.save_pretrained(tmp_path / name)
        assert tokenizer_difference(tok, load_tokenizer(tmp_path / name)) == ""
        assert tokenizer_difference(AutoTokenizer.from_pretrained(tmp_path / name), tok) == ""


def test_tokenizer_difference_names_sizes_first_differing_id_and_kind():
    small, large = build_char_tokenizer("a cab\n"), build_char_tokenizer("the king loves the crown.\n")
    assert tokenizer_difference(small, large) == "vocabulary 6 vs 18 tokens, first difference at id 2: 'a' vs '.'"
    same_size = tokenizer_difference(build_char_tokenizer("xyz ab\n"), build_char_tokenizer("abcdef\n"))
    assert same_size == "vocabulary 8 vs 8 tokens, first difference at id 1: ' ' vs 'a'"
    grown = build_char_tokenizer("a cab\n")
    grown.add_tokens(["<x>"])
    assert tokenizer_difference(small, grown) == "vocabulary 6 vs 7 tokens, first difference at id 6: none vs '<x>'"
    assert tokenizer_difference(small, grown, b_may_extend=True) == ""  # e.g. a gist model reading its base's data
    assert tokenizer_difference(grown, small, b_may_extend=True) != ""  # the data's <x> would be out of the model
    bpe = train_bpe_tokenizer([english_like(500)], vocab_size=270)
    assert tokenizer_difference(bpe, small).startswith("BPE vs WordLevel tokenizer; vocabulary 270 vs 6 tokens")


@pytest.mark.parametrize("vocab, merges, message", [
    ({"a": "x", "b": 1}, "a b", "vocab.json: token 'a' has id 'x'; ids are integers >= 0"),
    ({"a": 0, "b": 1}, "a c", "not a usable BPE (Error while initializing BPE: Token `c` out of vocabulary)"),
], ids=["string-id", "unknown-merge"])
def test_malformed_gpt2_files_are_a_backpack_error(tmp_path, vocab, merges, message):
    """Both were tracebacks from the tokenizers library."""
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text(f"#version: 0.2\n{merges}\n")
    with pytest.raises(BackpackError) as err:
        load_tokenizer(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", ["{}", '{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}}'])
def test_malformed_tokenizer_json_is_a_backpack_error(tmp_path, content):
    """Valid JSON that is no tokenizer: a KeyError traceback before."""
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(BackpackError, match=r"cannot load tokenizer \(KeyError: 'added_tokens'\)"):
        load_tokenizer(tmp_path)
