"""`backpack senses`: what each sense of a word raises and lowers in the output vocabulary, a heatmap of several
words' senses, sense similarity between words, and a word's nearest neighbours in sense space."""

from __future__ import annotations

from pathlib import Path

from .options import non_negative_int, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("senses", help="sense projections, similarity and neighbours of words")
    p.add_argument("--model", required=True, help="Backpack model directory or training run directory")
    p.add_argument("--token", action="append", default=[], help="word or token (repeat for several)")
    p.add_argument("--words", default=None, help="comma-separated words, or a file with one word per line")
    p.add_argument("--top", type=positive_int, default=10, help="tokens listed per sense and direction")
    p.add_argument("--multi-token", choices=["average", "first"], default="average",
                   help="how a word of several tokens is represented (average)")
    p.add_argument("--similarity", action="store_true", help="sense similarity between every pair of the words")
    p.add_argument("--neighbours", type=non_negative_int, default=0, metavar="N", help="N nearest tokens in sense space per word")
    p.add_argument("--sense", type=non_negative_int, default=None, help="neighbours by this sense only (default: all senses)")
    p.add_argument("--heatmap", action="store_true", help="write senses.png (words x senses) into --out")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="writes senses.json (and senses.png)")
    p.add_argument("--json", default=None, help="also write the projections to this JSON file")
    p.set_defaults(func=run)


def _words(args) -> list[str]:
    from ..data.prepare import read_document
    from ..errors import BackpackError

    words = list(args.token)
    if args.words:
        path = Path(args.words)
        if path.is_file():
            words += [w.strip() for w in read_document(path).splitlines() if w.strip()]
        else:
            words += [w.strip() for w in args.words.split(",") if w.strip()]
    if not words:
        raise BackpackError("give words with --token WORD or --words LIST")
    return words


def run(args) -> None:
    from ..atomic import check_output_dir, check_output_file, is_json_object_with, write_json_atomic
    from ..errors import BackpackError
    from ..model.loading import load_model
    from ..senses.projection import (check_sense_index, format_projection, projection_heatmap, require_backpack,
                                     sense_projections, visible)
    from ..senses.similarity import nearest_neighbours, sense_similarity

    words = _words(args)
    if args.heatmap and not args.out:
        raise BackpackError("--heatmap needs --out DIR")
    if args.sense is not None and not args.neighbours:
        raise BackpackError("--sense picks the sense of --neighbours N; give --neighbours too")
    if args.out:
        check_output_dir(args.out)
    if args.json:
        check_output_file(args.json, "an earlier senses result", lambda path: is_json_object_with(path, "projections"))
    model, tokenizer = load_model(args.model)
    if tokenizer is None:
        raise BackpackError(f"{args.model} has no tokenizer")
    require_backpack(model)
    if args.neighbours:
        check_sense_index(model, args.sense)  # before the projections are printed
    projections = sense_projections(model, tokenizer, words, args.top, args.multi_token)
    for projection in projections:
        print(format_projection(projection))
    result = {"words": words, "multi_token": args.multi_token, "projections": [p.to_dict() for p in projections]}
    if args.similarity:
        pairs = [sense_similarity(model, tokenizer, a, b, args.multi_token)
                 for i, a in enumerate(words) for b in words[i + 1:]]
        for s in pairs:
            print(f"{s.word_a} ~ {s.word_b}: overall {s.overall:.3f}, embedding {s.embedding:.3f}, per sense "
                  + " ".join(f"{v:.2f}" for v in s.per_sense))
        result["similarity"] = [s.to_dict() for s in pairs]
    if args.neighbours:
        found = [nearest_neighbours(model, tokenizer, w, args.neighbours, args.sense, args.multi_token) for w in words]
        for n in found:
            where = "all senses" if n.sense is None else f"sense {n.sense}"
            print(f"nearest to {n.word!r} ({where}): " + " ".join(f"{visible(t)}({c:.2f})" for t, c in n.neighbours))
        result["neighbours"] = [n.to_dict() for n in found]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "senses.json", result, allow_nan=False)
        if args.heatmap:
            projection_heatmap(projections, args.out / "senses.png")
        print(f"wrote {args.out}/senses.json" + (" and senses.png" if args.heatmap else ""))
    if args.json:
        write_json_atomic(args.json, [p.to_dict() for p in projections], allow_nan=False)
