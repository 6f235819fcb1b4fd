"""`backpack lexsim --model DIR --data FILE...`: Spearman correlation of embedding/sense similarities with human
word-similarity ratings (Backpack: all methods; any Hugging Face causal LM: embedding rows)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("lexsim", help="lexical similarity benchmark (SimLex-999, SimVerb-3500, RG-65, WS-353, MEN)")
    p.add_argument("--model", required=True, help="model directory (Backpack or any Hugging Face causal LM)")
    p.add_argument("--data", required=True, nargs="+", action="extend", type=Path, metavar="FILE",
                   help="word-pair files (--data may be repeated)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes lexsim.json and lexsim.md")
    p.add_argument("--multi-token", choices=["average", "first"], default="average",
                   help="how a word of several tokens is represented (average)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder when the model directory has none")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..atomic import check_output_dir, replacing, write_json_atomic
    from ..data.tokenizers import load_tokenizer
    from ..errors import BackpackError
    from ..model.loading import load_model
    from ..senses.lexsim import MIN_PAIRS, WordVectors, lexical_similarity, load_pairs, markdown_table

    check_output_dir(args.out)
    golds = [load_pairs(path) for path in args.data]  # parse every file before the (slow) model load
    model, tokenizer = load_model(args.model)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise BackpackError(f"{args.model} has no tokenizer; pass --tokenizer")
    vectors = WordVectors(model, tokenizer, args.multi_token)
    results = [lexical_similarity(model, tokenizer, gold, vectors=vectors) for gold in golds]
    if not any(r.spearman for r in results):
        skipped = list(dict.fromkeys(w for r in results for w in r.skipped_words))
        covered = ", ".join(f"{r.dataset} {r.n_covered}/{r.n_pairs}" for r in results)
        raise BackpackError(f"no file has {MIN_PAIRS} word pairs this tokenizer can encode, so there is nothing to correlate "
                            + (f"(first words it cannot encode: {', '.join(skipped[:5])}; " if skipped else "(")
                            + f"pairs covered: {covered})")
    table = markdown_table(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "lexsim.json", {"model": str(args.model), "multi_token": args.multi_token,
                                                 "results": [r.to_dict() for r in results]}, allow_nan=False)
    with replacing(args.out / "lexsim.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    print(f"wrote {args.out}/lexsim.json and lexsim.md")
