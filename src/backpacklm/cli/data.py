"""`backpack data prepare SOURCES... --out DIR`: text files -> train.bin, val.bin, tokenizer/, meta.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import positive_int


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare token files for training")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="prepare")
    prepare = commands.add_parser(
        "prepare",
        help="tokenize text files into a data folder",
        description="Tokenize text files (one document each) into DIR/train.bin, val.bin, tokenizer/ and meta.json.",
    )
    prepare.add_argument("sources", nargs="+", help="text files, folders (every *.txt below), globs, or 'shakespeare'")
    prepare.add_argument("--out", required=True, type=Path, metavar="DIR", help="data folder to write")
    prepare.add_argument(
        "--tokenizer",
        default="char",
        metavar="char|bpe|word|gpt2|PATH",
        help="char (default), bpe (trained on the sources), word (one id per word of the sources), gpt2, "
        "or a tokenizer folder",
    )
    prepare.add_argument("--vocab-size", type=positive_int, default=8192, metavar="N", help="vocabulary size for bpe (8192)")
    prepare.add_argument(
        "--val-fraction", type=float, default=0.1, metavar="F", help="tail of each document kept for validation (0.1)"
    )
    prepare.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from ..atomic import output_dir
    from ..data.prepare import prepare_corpus  # transformers is slow to import: only when this command runs

    with output_dir(args.out):
        meta = prepare_corpus(args.sources, args.out, args.tokenizer, args.vocab_size, args.val_fraction)
    print(
        f"{meta['n_documents']} document(s): {meta['n_train_tokens']:,} train + {meta['n_val_tokens']:,} val tokens "
        f"({meta['dtype']}), vocab {meta['vocab_size']:,} ({meta['tokenizer_kind']})"
    )
    print(f"wrote {args.out}/train.bin, val.bin, meta.json, tokenizer/")
