"""`backpack convert`: to and from the official stanfordnlp/backpack-gpt2 checkpoint layout.

    backpack convert --official DIR --out DIR [--tokenizer DIR]                      official -> ours
    backpack convert --to-official --model DIR --out DIR [--format safetensors|bin]  ours -> official
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BackpackError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="import or export the official backpack-gpt2 checkpoint layout",
        description="Convert between the official stanfordnlp/backpack-gpt2 checkpoint layout and backpacklm's. "
        "Import: --official DIR --out DIR [--tokenizer DIR]. Export: --to-official --model DIR --out DIR.",
    )
    parser.add_argument("--official", metavar="DIR", help="official checkpoint directory to import")
    parser.add_argument("--to-official", action="store_true", help="export --model to the official layout")
    parser.add_argument("--model", metavar="DIR", help="backpacklm model (or training run) directory to export")
    parser.add_argument("--out", metavar="DIR", required=True, help="output directory")
    parser.add_argument(
        "--tokenizer", metavar="DIR",
        help="import: GPT-2 tokenizer folder to save with the model (default: the one in --official, if any)",
    )
    parser.add_argument(
        "--format", choices=("safetensors", "bin"), default=None,
        help="export: weights file, model.safetensors (default) or pytorch_model.bin",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.to_official:
        if args.official is not None:
            raise BackpackError("--official (import) and --to-official (export) cannot be combined")
        if args.model is None:
            raise BackpackError("--to-official needs --model DIR")
        if args.tokenizer is not None:
            raise BackpackError("--tokenizer applies only to import (--official)")
        _export(Path(args.model), Path(args.out), args.format or "safetensors")
    else:
        if args.official is None:
            raise BackpackError("give --official DIR (import) or --to-official --model DIR (export)")
        if args.model is not None:
            raise BackpackError("--model applies only to export (--to-official)")
        if args.format is not None:
            raise BackpackError("--format applies only to export (--to-official)")
        _import(Path(args.official), Path(args.out), args.tokenizer)


def _import(official: Path, out: Path, tokenizer: str | None) -> None:
    from ..model.official import convert_official, has_tokenizer_files

    written = convert_official(official, out, tokenizer_dir=tokenizer)
    for path in written:
        print(f"wrote {path}")
    if tokenizer is None and not has_tokenizer_files(official):
        print(f"note: no tokenizer in {official}; pass --tokenizer DIR to save one with the model")


def _export(model_dir: Path, out: Path, fmt: str) -> None:
    from ..model.loading import load_model, resolve_model_dir
    from ..model.modeling_backpack import BackpackForCausalLM
    from ..model.official import OFFICIAL_MODEL_TYPE, check_not_in_place, export_official

    resolved = resolve_model_dir(model_dir)
    check_not_in_place(resolved, out)
    try:
        model_type = json.loads((resolved / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None  # load_model reports the problem
    if model_type == OFFICIAL_MODEL_TYPE:
        raise BackpackError(f"{resolved} is already in the official layout (import it with --official)")
    model, tokenizer = load_model(resolved)
    if not isinstance(model, BackpackForCausalLM):
        raise BackpackError(f"{resolved} holds a {type(model).__name__}; only Backpack models can be exported")
    for path in export_official(model, out, fmt=fmt):
        print(f"wrote {path}")
    if tokenizer is not None:
        try:
            for name in tokenizer.save_pretrained(out):
                print(f"wrote {name}")
        except OSError as err:
            raise BackpackError(f"cannot write the tokenizer to {out}: {err}") from None
