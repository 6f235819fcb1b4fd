"""Read a prepared data folder (see prepare.py) and cut it into training and evaluation batches."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from ..errors import BackpackError
from .tokenizers import load_tokenizer, tokenizer_difference

SPLITS = ("train", "val")
META_KEYS = ("vocab_size", "dtype", "eot_id", "n_train_tokens", "n_val_tokens")
TOKEN_DTYPES = ("uint16", "uint32")  # what prepare.token_dtype writes


class TokenData:
    """A prepared data folder: `meta` (dict from meta.json), `train` and `val` (read-only 1-D token arrays,
    memory-mapped), `tokenizer` (loaded on first use)."""

    def __init__(self, data_dir: str | Path):
        self.dir = Path(data_dir)
        hint = "make one with `backpack data prepare`"
        if not self.dir.is_dir():
            raise BackpackError(f"{self.dir}: no such data folder ({hint})")
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise BackpackError(f"{self.dir}: no meta.json, not a prepared data folder ({hint})")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise BackpackError(f"{meta_path}: unreadable ({err})") from None
        if not isinstance(self.meta, dict):
            raise BackpackError(f"{meta_path}: not a JSON object")
        if missing := [key for key in META_KEYS if key not in self.meta]:
            raise BackpackError(f"{meta_path}: missing {', '.join(missing)}")
        if self.meta["dtype"] not in TOKEN_DTYPES:
            raise BackpackError(f"{meta_path}: dtype {self.meta['dtype']!r}, expected {' or '.join(TOKEN_DTYPES)}")
        for key, lowest, what in (("n_train_tokens", 0, "a token count"), ("n_val_tokens", 0, "a token count"),
                                  ("vocab_size", 1, "a vocabulary size")):
            if not isinstance(self.meta[key], int) or isinstance(self.meta[key], bool) or self.meta[key] < lowest:
                raise BackpackError(f"{meta_path}: {key} {self.meta[key]!r}, expected {what}")
        eot = self.meta["eot_id"]
        is_id = isinstance(eot, int) and not isinstance(eot, bool) and 0 <= eot < self.meta["vocab_size"]
        if eot is not None and not is_id:
            raise BackpackError(f"{meta_path}: eot_id {eot!r}, expected a token id below vocab_size or null")
        self.train = self._open("train")
        self.val = self._open("val")

    def _open(self, split: str) -> np.ndarray:
        path, dtype, n = self.dir / f"{split}.bin", np.dtype(self.meta["dtype"]), self.meta[f"n_{split}_tokens"]
        if not path.is_file():
            raise BackpackError(f"{path}: missing")
        if path.stat().st_size != n * dtype.itemsize:
            raise BackpackError(f"{path}: {path.stat().st_size} bytes, but meta.json says {n} {dtype} tokens")
        if n == 0:  # an empty file cannot be memory-mapped
            empty = np.zeros(0, dtype)
            empty.flags.writeable = False
            return empty
        return np.memmap(path, dtype=dtype, mode="r")

    def split(self, name: str) -> np.ndarray:
        """The tokens of split `name` ("train" or "val")."""
        if name not in SPLITS:
            raise BackpackError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        return load_tokenizer(self.dir / "tokenizer")

    def check_tokenizer(self, model_tokenizer: PreTrainedTokenizerFast | None, model: str | Path) -> None:
        """BackpackError naming both folders when the model at `model` comes with another tokenizer than this data
        (`tokenizer_difference`: kind or vocabulary), which would read the data's ids as other tokens; a model
        tokenizer that only adds tokens (a gist model's <GIST>) reads them alike and passes. Silent when
        either side has no tokenizer saved (`model_tokenizer` None, no tokenizer/ folder): there is nothing to compare,
        and the callers' token id range checks still apply."""
        if model_tokenizer is None or not (self.dir / "tokenizer").is_dir():
            return
        if difference := tokenizer_difference(self.tokenizer, model_tokenizer, b_may_extend=True):
            raise BackpackError(f"{self.dir} was prepared with a different tokenizer than {model} "
                                f"(data vs model: {difference})")


def sample_batch(tokens: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """[batch_size, block_size] int64 windows of `tokens` starting at uniform positions in [0, len - block_size).

    Positions come from `generator` only, so restoring its state (get_state/set_state) repeats the same batches.
    """
    if len(tokens) < block_size + 1:
        raise BackpackError(f"a data split has {len(tokens)} tokens, fewer than block size + 1 = {block_size + 1}; "
                            f"give {f'a --block-size below {len(tokens)} or ' if len(tokens) > 1 else ''}more text")
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([tokens[s : s + block_size] for s in starts]).astype(np.int64))


def eval_window_count(n_tokens: int, block_size: int, batch_size: int) -> int:
    """How many batches `iter_eval_windows` yields for `n_tokens` tokens (before max_batches)."""
    n_full, tail = _window_plan(n_tokens, block_size)
    return -(-n_full // batch_size) + (tail > 0)


def _window_plan(n_tokens: int, block_size: int) -> tuple[int, int]:
    """(full windows, targets left for a shorter last window) of windows starting every block_size - 1 tokens."""
    if block_size < 2:
        raise BackpackError(f"block size must be at least 2 (a token and its successor), got {block_size}")
    if n_tokens < 2:
        raise BackpackError(f"split has {n_tokens} token(s); scoring needs at least 2")
    return divmod(n_tokens - 1, block_size - 1)


def iter_eval_windows(
    tokens: np.ndarray, block_size: int, batch_size: int, max_batches: int | None = None
) -> Iterator[torch.Tensor]:
    """int64 [b, block_size] batches of windows that start every block_size - 1 tokens from the start of `tokens`,
    so each window's first token is the previous window's last: every token but the first of `tokens` is a
    next-token target exactly once, and the first is context only. b = batch_size, except in the last full batch;
    the tail that fills no whole window comes last as a [1, n] batch (2 <= n < block_size). At most `max_batches`
    batches."""
    n_full, tail = _window_plan(len(tokens), block_size)
    stride = block_size - 1
    for i, first in enumerate(range(0, n_full, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        starts = range(first * stride, min(first + batch_size, n_full) * stride, stride)
        yield torch.from_numpy(np.stack([tokens[s : s + block_size] for s in starts]).astype(np.int64))
    if tail and (max_batches is None or eval_window_count(len(tokens), block_size, batch_size) <= max_batches):
        yield torch.from_numpy(tokens[n_full * stride :].astype(np.int64)[None])
