"""`backpack eval`: perplexity on a prepared split or a text file."""

from __future__ import annotations

from pathlib import Path

from .options import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity of a model")
    p.add_argument("--model", required=True, help="model directory or training run directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="prepared data directory")
    source.add_argument("--text", help="a UTF-8 text file, read as plain text (a literal <|endoftext|> is characters)")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--block-size", type=positive_int, default=None,
                   help="tokens per window, >= 2 (default: the model's positions); windows overlap by one token, so "
                   "every token but the first is scored once")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-batches", type=positive_int, default=None)
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> None:
    import numpy as np

    from ..atomic import check_output_file, is_json_object_with, write_json_atomic
    from ..data.dataset import TokenData
    from ..data.tokenizers import encode_strict
    from ..errors import BackpackError
    from ..data.prepare import read_document
    from ..evaluation import perplexity
    from ..model.loading import load_model, max_positions

    if args.json:
        check_output_file(args.json, "an earlier eval result",
                          lambda path: is_json_object_with(path, "loss", "perplexity", "tokens"))
    model, tokenizer = load_model(args.model)
    if args.data:
        data = TokenData(args.data)
        data.check_tokenizer(tokenizer, args.model)
        tokens = data.split(args.split)
    else:
        if tokenizer is None:
            raise BackpackError("the model directory has no tokenizer to read --text with")
        text = read_document(Path(args.text))  # a literal <|endoftext|> is text here, as `data prepare` reads it
        tokens = np.array(encode_strict(tokenizer, text, specials_as_text=True), dtype=np.int64)
    if len(tokens) < 2:
        raise BackpackError(f"{args.data or args.text}: {len(tokens)} token(s); perplexity needs at least 2")
    if int(tokens.max()) >= model.config.vocab_size:
        raise BackpackError(f"token id {int(tokens.max())} is out of range for the model's vocabulary")
    block = min(args.block_size or max_positions(model) or len(tokens), len(tokens))
    result = perplexity(model, tokens, block, args.batch_size, args.max_batches, progress=not args.no_progress)
    result["source"] = args.data or args.text
    print(f"loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.3f} "
          f"over {result['tokens']:,} tokens (block {result['block_size']})")
    if args.json:
        write_json_atomic(args.json, result)
