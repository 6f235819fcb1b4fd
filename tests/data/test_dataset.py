import json

import numpy as np
import pytest
import torch

from backpacklm.data.dataset import TokenData, sample_batch
from backpacklm.data.prepare import prepare_corpus
from backpacklm.errors import BackpackError

TEXT = "".join(chr(97 + i % 26) for i in range(2000))  # abc...z repeated: the token at i is i % 26


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT)
    prepare_corpus([str(tmp_path / "input.txt")], tmp_path / "data")
    return tmp_path / "data"


def test_token_data_opens_read_only_memmaps(data_dir):
    data = TokenData(data_dir)
    assert data.meta["n_train_tokens"] == 1801 and data.meta["n_val_tokens"] == 201
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16 and len(data.train) == 1801
    assert data.split("val") is data.val and data.val[0] == 1800 % 26 and data.val[-1] == data.meta["eot_id"] == 26
    with pytest.raises(ValueError):
        data.train[0] = 1
    assert data.tokenizer.decode(data.train[:5]) == "abcde"
    assert data.tokenizer is data.tokenizer  # loaded once
    with pytest.raises(BackpackError, match="unknown split 'test'"):
        data.split("test")


def test_sample_batch_windows_and_resumable_generator(data_dir):
    train = TokenData(data_dir).train
    gen = torch.Generator().manual_seed(0)
    x = sample_batch(train, batch_size=8, block_size=16, generator=gen)
    assert x.shape == (8, 16) and x.dtype == torch.int64
    assert ((x[:, 1:] - x[:, :-1]) % 26 == 1).all()  # each row is a contiguous window of abc...z
    state = gen.get_state()
    after = [sample_batch(train, 8, 16, gen) for _ in range(3)]
    gen.set_state(state)
    assert all(torch.equal(a, sample_batch(train, 8, 16, gen)) for a in after)
    assert not torch.equal(after[0], after[1])


def test_sample_batch_covers_all_starts():
    tokens = np.arange(10, dtype=np.uint16)
    x = sample_batch(tokens, batch_size=2000, block_size=4, generator=torch.Generator().manual_seed(1))
    assert sorted(set(x[:, 0].tolist())) == [0, 1, 2, 3, 4, 5]  # starts in [0, 10 - 4)
    with pytest.raises(BackpackError, match=r"split has 10 tokens, fewer than block size \+ 1 = 11; give a "
                                           r"--block-size below 10 or more text"):
        sample_batch(tokens, 2, 10, torch.Generator())


def test_token_data_errors(data_dir, tmp_path):
    with pytest.raises(BackpackError, match="no such data folder"):
        TokenData(tmp_path / "nowhere")
    with pytest.raises(BackpackError, match="no meta.json"):
        TokenData(tmp_path)
    (data_dir / "val.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(BackpackError, match=r"val\.bin: 10 bytes, but meta\.json says 201 uint16 tokens"):
        TokenData(data_dir)
    (data_dir / "val.bin").unlink()
    with pytest.raises(BackpackError, match=r"val\.bin: missing"):
        TokenData(data_dir)
    (data_dir / "meta.json").write_text(json.dumps({"dtype": "uint16"}))
    with pytest.raises(BackpackError, match="missing vocab_size, eot_id"):
        TokenData(data_dir)


def test_empty_val_split(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    prepare_corpus([str(tmp_path / "a.txt")], tmp_path / "data", val_fraction=0)
    data = TokenData(tmp_path / "data")
    assert len(data.val) == 0 and len(data.train) == 4


@pytest.mark.parametrize("field, value, message", [
    ("dtype", "foo", "dtype 'foo', expected uint16 or uint32"),
    ("dtype", "float32", "dtype 'float32', expected uint16 or uint32"),
    ("n_val_tokens", "abc", "n_val_tokens 'abc', expected a token count"),
    ("n_train_tokens", -1, "n_train_tokens -1, expected a token count"),
])
def test_token_data_rejects_corrupt_meta_values(data_dir, field, value, message):
    meta = json.loads((data_dir / "meta.json").read_text())
    meta[field] = value
    (data_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BackpackError, match=message):
        TokenData(data_dir)
    (data_dir / "meta.json").write_text("[1, 2]")
    with pytest.raises(BackpackError, match="not a JSON object"):
        TokenData(data_dir)
