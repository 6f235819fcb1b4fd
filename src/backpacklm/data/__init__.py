"""Data preparation: tokenizers, text files -> token files, the built-in shakespeare corpus, batches."""

from .dataset import TokenData, iter_eval_windows, sample_batch
from .prepare import prepare_corpus, resolve_sources
from .shakespeare import fetch_shakespeare
from .tokenizers import (
    EOT,
    build_char_tokenizer,
    encode_ordinary,
    encode_strict,
    is_char_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "EOT",
    "TokenData",
    "build_char_tokenizer",
    "encode_ordinary",
    "encode_strict",
    "fetch_shakespeare",
    "is_char_tokenizer",
    "iter_eval_windows",
    "load_tokenizer",
    "prepare_corpus",
    "resolve_sources",
    "sample_batch",
    "train_bpe_tokenizer",
]
