import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from backpacklm import atomic
from backpacklm.data import prepare as prep
from backpacklm.data.dataset import TokenData
from backpacklm.data.prepare import prepare_corpus, resolve_sources, token_dtype
from backpacklm.data.tokenizers import EOT, load_tokenizer
from backpacklm.errors import BackpackError

DOC_A = "hello world\n"  # 12 characters
DOC_B = "abcdefghij"  # 10 characters


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(DOC_A)
    (folder / "sub" / "b.txt").write_text(DOC_B)
    (folder / "notes.md").write_text("not a .txt file")
    return folder


def read_meta(out):
    return json.loads((out / "meta.json").read_text())


def test_char_prepare_splits_each_document_and_ends_it_with_eot(corpus, tmp_path):
    out = tmp_path / "out"
    meta = prepare_corpus([str(corpus)], out, val_fraction=0.25)
    assert meta == read_meta(out)
    tok = load_tokenizer(out / "tokenizer")
    assert meta["vocab_size"] == len(tok) == len(set(DOC_A + DOC_B)) + 1 == 17
    assert meta["eot_id"] == tok.eos_token_id == 16
    assert meta["dtype"] == "uint16" and meta["tokenizer_kind"] == "char"
    assert meta["n_documents"] == 2 and meta["sources"] == [str(corpus / "a.txt"), str(corpus / "sub" / "b.txt")]
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    # int(12 * 0.75) = 9 and int(10 * 0.75) = 7 tokens to train, the rest to val, each part followed by eot
    assert tok.decode(train) == f"hello wor{EOT}abcdefg{EOT}"
    assert tok.decode(val) == f"ld\n{EOT}hij{EOT}"
    assert meta["n_train_tokens"] == len(train) == 9 + 1 + 7 + 1
    assert meta["n_val_tokens"] == len(val) == 3 + 1 + 3 + 1
    assert len(train) + len(val) == len(DOC_A) + len(DOC_B) + 2 * 2
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]  # no temp files


def test_single_file_split_matches_nanogpt(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    (tmp_path / "input.txt").write_text(text)
    meta = prepare_corpus([str(tmp_path / "input.txt")], tmp_path / "out")
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    assert meta["n_train_tokens"] == 900 + 1 and meta["n_val_tokens"] == 100 + 1
    assert tok.decode(train[:-1]) == text[:900]


def test_prepare_is_deterministic(corpus, tmp_path):
    prepare_corpus([str(corpus)], tmp_path / "one")
    prepare_corpus([str(corpus)], tmp_path / "two")
    for name in ["train.bin", "val.bin"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_sources_files_globs_folders_in_order_without_duplicates(corpus):
    a, b = corpus / "a.txt", corpus / "sub" / "b.txt"
    assert resolve_sources([str(b), str(corpus)]) == [b, a]
    assert resolve_sources([str(corpus / "**" / "*.txt")]) == [a, b]


def test_bpe_prepare(corpus, tmp_path):
    (corpus / "c.txt").write_text("the cat sat on the mat with the hat\n" * 50)
    meta = prepare_corpus([str(corpus)], tmp_path / "out", tokenizer="bpe", vocab_size=280)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert meta["vocab_size"] == len(tok) == 280 and meta["tokenizer_kind"] == "bpe" and meta["eot_id"] == 0
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert (train == 0).sum() == (val == 0).sum() == 3 and meta["n_train_tokens"] == len(train)
    docs = [DOC_A, (corpus / "c.txt").read_text(), DOC_B]  # a.txt, c.txt, sub/b.txt
    heads, tails = tok.decode(train).split(EOT)[:-1], tok.decode(val).split(EOT)[:-1]
    assert [head + tail for head, tail in zip(heads, tails)] == docs


def test_literal_eot_text_is_not_a_document_boundary(tmp_path):
    (tmp_path / "a.txt").write_text(f"one{EOT}two")
    meta = prepare_corpus([str(tmp_path / "a.txt")], tmp_path / "out", val_fraction=0)
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    assert (train == meta["eot_id"]).sum() == 1 and len(train) == len(f"one{EOT}two") + 1
    assert meta["n_val_tokens"] == 0 and (tmp_path / "out" / "val.bin").stat().st_size == 0


def test_reusing_a_char_tokenizer(corpus, tmp_path):
    prepare_corpus([str(corpus)], tmp_path / "first")
    (tmp_path / "new.txt").write_text("bad code")
    first_tokenizer = str(tmp_path / "first" / "tokenizer")
    meta = prepare_corpus([str(tmp_path / "new.txt")], tmp_path / "second", tokenizer=first_tokenizer)
    assert meta["tokenizer_kind"] == "char" and meta["vocab_size"] == 17
    (tmp_path / "other.txt").write_text("Zebra?")
    message = r"other\.txt: 2 character\(s\) not in the tokenizer's vocabulary: '\?' 'Z'$"
    with pytest.raises(BackpackError, match=message):
        prepare_corpus([str(tmp_path / "other.txt")], tmp_path / "third", tokenizer=first_tokenizer)
    assert not list((tmp_path / "third").iterdir())  # nothing half-written


def test_token_dtype():
    assert token_dtype(85) is np.uint16 and token_dtype(50257) is np.uint16 and token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32


def test_uint32_when_vocab_is_large(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "token_dtype", lambda n: np.uint32)
    meta = prepare_corpus([str(corpus)], tmp_path / "out")
    assert meta["dtype"] == "uint32"
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * meta["n_train_tokens"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"doc\.txt: no such file or folder \(built-in datasets: shakespeare\)$"),
        (b"", r"doc\.txt: empty file$"),
        (b"caf\xe9\n", r"doc\.txt: not UTF-8 text \(invalid byte at offset 3\)$"),
    ],
    ids=["missing", "empty", "latin1"],
)
def test_bad_files(tmp_path, content, message):
    if content is not None:
        (tmp_path / "doc.txt").write_bytes(content)
    with pytest.raises(BackpackError, match=message):
        prepare_corpus([str(tmp_path / "doc.txt")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_bad_inputs(tmp_path, corpus):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BackpackError, match="folder has no"):
        prepare_corpus([str(tmp_path / "empty_dir")], tmp_path / "out")
    with pytest.raises(BackpackError, match="pattern matches no files"):
        prepare_corpus([str(tmp_path / "*.nothing")], tmp_path / "out")
    with pytest.raises(BackpackError, match="no sources"):
        prepare_corpus([], tmp_path / "out")
    with pytest.raises(BackpackError, match=r"val fraction must be in \[0, 1\)"):
        prepare_corpus([str(corpus)], tmp_path / "out", val_fraction=1.0)
    with pytest.raises(BackpackError, match="unknown tokenizer 'wordpiece'"):
        prepare_corpus([str(corpus)], tmp_path / "out", tokenizer="wordpiece")


def test_utf8_bom_is_dropped_and_crlf_kept(tmp_path):
    (tmp_path / "a.txt").write_bytes("\ufeffline\r\n".encode())
    meta = prepare_corpus([str(tmp_path / "a.txt")], tmp_path / "out", val_fraction=0)
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert tok.decode(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)) == f"line\r\n{EOT}"
    assert meta["vocab_size"] == 7


def _prepare_over(tmp_path, break_step):
    """Prepare "abc" text into out, then same-length "cba" text over it while `break_step()` has made one step
    fail with OSError; returns out and the first run's train.bin."""
    (tmp_path / "a.txt").write_text("abc" * 50)
    (tmp_path / "b.txt").write_text("cba" * 50)  # the same ids in another order
    out = tmp_path / "out"
    prepare_corpus([str(tmp_path / "a.txt")], out)
    first = (out / "train.bin").read_bytes()
    break_step()
    with pytest.raises(OSError):
        prepare_corpus([str(tmp_path / "b.txt")], out)
    return out, first


def _fail(*args, **kwargs):
    raise OSError(5, "Input/output error")


def test_failure_before_the_outputs_move_keeps_the_old_dataset(tmp_path, monkeypatch):
    out, first = _prepare_over(tmp_path, lambda: monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", _fail))
    monkeypatch.undo()
    data = TokenData(out)
    assert (out / "train.bin").read_bytes() == first and data.tokenizer.decode(data.train[:3].tolist()) == "abc"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]


def test_failure_while_the_outputs_move_leaves_no_dataset(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):  # the last move, meta.json's, fails
        (_fail if Path(dst).name == "meta.json" else real_replace)(src, dst)

    out, _ = _prepare_over(tmp_path, lambda: monkeypatch.setattr(atomic.os, "replace", replace))
    with pytest.raises(BackpackError, match="no meta.json"):  # not the old meta over new tokens and tokenizer
        TokenData(out)


def test_token_ids_past_len_choose_the_dtype(tmp_path):
    """A loaded tokenizer whose <|endoftext|> id (70000) lies past its 3 tokens: ids are stored as uint32, not
    wrapped to 70000 - 65536 = 4464 in uint16, and the vocabulary the model needs is 70001."""
    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, EOT: 70000}, unk_token=EOT))
    backend.pre_tokenizer = pre_tokenizers.FixedLength(length=1)
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT).save_pretrained(tmp_path / "tok")
    (tmp_path / "ab.txt").write_text("abab")
    meta = prepare_corpus([str(tmp_path / "ab.txt")], tmp_path / "out", tokenizer=str(tmp_path / "tok"),
                          val_fraction=0)
    assert (meta["vocab_size"], meta["dtype"], meta["eot_id"]) == (70001, "uint32", 70000)
    assert TokenData(tmp_path / "out").train.tolist() == [0, 1, 0, 1, 70000]
