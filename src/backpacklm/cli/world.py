"""`backpack world senses --out DIR`: a synthetic corpus with planted structure and its ground truth."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    world = subparsers.add_parser("world", help="generate synthetic corpora with known ground truth")
    kinds = world.add_subparsers(dest="world_kind", required=True, metavar="senses")
    senses = kinds.add_parser(
        "senses", help="topics, polysemous words, planted pronoun rates and facts (for the sense methods)",
        description="Write DIR/world.txt (one document per line) and DIR/truth.json; with --prepare, also tokenize "
                    "it into DIR/data (word-level: every world word one token), ready for `backpack train --data DIR/data`.",
    )
    senses.add_argument("--out", required=True, type=Path, metavar="DIR")
    senses.add_argument("--seed", type=int, default=0)
    senses.add_argument("--documents", type=int, default=4000, metavar="N", help="documents (lines) to write (4000)")
    senses.add_argument("--prepare", action="store_true", help="also tokenize into DIR/data")
    senses.set_defaults(func=run_senses)


def run_senses(args) -> None:
    from ..worlds.senses import generate_world, prepare_world

    truth = generate_world(args.out, args.seed, args.documents)
    print(f"wrote {args.out}/world.txt ({truth['n_documents']} documents) and {args.out}/truth.json: "
          f"{len(truth['topics'])} topics, {len(truth['polysemous'])} polysemous words, "
          f"{len(truth['pronouns']['rates_he'])} professions")
    if args.prepare:
        meta = prepare_world(args.out, args.out / "data")
        print(f"prepared {args.out}/data: {meta['n_train_tokens']:,} train tokens, vocab {meta['vocab_size']}")
