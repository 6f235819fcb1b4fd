"""`backpack world <kind> --out DIR`: write a synthetic corpus with planted structure and its ground truth JSON.

Kinds: `senses` (topics, polysemous words, pronoun rates, facts) and `instructions` (Alpaca-format tasks for gists).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .help_format import DefaultsHelpFormatter
from .options import seed


def register(subparsers) -> None:
    world = subparsers.add_parser("world", help="generate synthetic data with known ground truth")
    kinds = world.add_subparsers(dest="world_kind", required=True, metavar="senses|instructions")
    _register_senses(kinds)
    _register_instructions(kinds)


def _register_senses(kinds) -> None:
    senses = kinds.add_parser(
        "senses", help="topics, polysemous words, planted pronoun rates and facts (for the sense methods)",
        description="Write DIR/world.txt (one document per line) and DIR/truth.json; with --prepare, also tokenize "
                    "it into DIR/data (word-level: every world word one token), ready for `backpack train --data DIR/data`.",
    )
    senses.add_argument("--out", required=True, type=Path, metavar="DIR")
    senses.add_argument("--seed", type=seed, default=0)
    senses.add_argument("--documents", type=int, default=4000, metavar="N", help="documents (lines) to write (4000)")
    senses.add_argument("--prepare", action="store_true", help="also tokenize into DIR/data")
    senses.set_defaults(func=run_senses)


def run_senses(args) -> None:
    from ..atomic import output_dir
    from ..data.prepare import check_data_dir
    from ..worlds.senses import generate_world, prepare_world

    if args.prepare:  # before the world is written: a DIR/data that cannot be one must not cost the old world
        check_data_dir(args.out / "data")
    with output_dir(args.out):
        truth = generate_world(args.out, args.seed, args.documents)
    print(f"wrote {args.out}/world.txt ({truth['n_documents']} documents) and {args.out}/truth.json: "
          f"{len(truth['topics'])} topics, {len(truth['polysemous'])} polysemous words, "
          f"{len(truth['pronouns']['rates_he'])} professions")
    if args.prepare:
        meta = prepare_world(args.out, args.out / "data")
        print(f"prepared {args.out}/data: {meta['n_train_tokens']:,} train tokens, vocab {meta['vocab_size']}")


def _register_instructions(kinds) -> None:
    from ..worlds.instructions import TASKS, InstructionWorldConfig

    d = InstructionWorldConfig()
    p = kinds.add_parser(
        "instructions",
        help="instruction data (Alpaca JSON) a tiny model can learn, for gist tokens",
        description="Write DIR/{train,seen,unseen_phrasing,long}.json (Alpaca format; also unseen_composition.json "
        "when some task pairs are held out), DIR/ground_truth.json (each example's tasks, parameters, phrasings) and DIR/tokenizer (word-level, over "
        "every split, with <GIST>: pass it to `backpack gist train --tokenizer`).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write")
    p.add_argument("--seed", type=seed, default=d.seed)
    p.add_argument("--n-train", type=int, default=d.n_train, help="training examples")
    p.add_argument("--n-eval", type=int, default=d.n_eval, help="examples per evaluation split")
    p.add_argument("--tasks", default=",".join(d.tasks), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--letters", default=d.letters, help="input alphabet (inputs use distinct letters)")
    p.add_argument("--min-len", type=int, default=d.min_len, help="shortest input, in letters")
    p.add_argument("--max-len", type=int, default=d.max_len, help="longest input, in letters")
    p.add_argument("--composite-fraction", type=float, default=d.composite_fraction, help="share of two-task examples")
    p.add_argument("--unseen-phrasings", type=int, default=d.unseen_phrasings, help="held-out phrasings per task")
    p.add_argument(
        "--unseen-compositions", type=float, default=d.unseen_compositions, help="share of task pairs held out"
    )
    p.set_defaults(func=run_instructions)


def run_instructions(args: argparse.Namespace) -> None:
    from ..atomic import output_dir
    from ..gist.layout import GistExample, build_gist_word_tokenizer
    from ..worlds.instructions import InstructionWorldConfig, generate_instruction_world, write_instruction_world

    config = InstructionWorldConfig(
        seed=args.seed, n_train=args.n_train, n_eval=args.n_eval,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), letters=args.letters,
        min_len=args.min_len, max_len=args.max_len, composite_fraction=args.composite_fraction,
        unseen_phrasings=args.unseen_phrasings, unseen_compositions=args.unseen_compositions,
    )
    world = generate_instruction_world(config)
    with output_dir(args.out):
        paths = write_instruction_world(world, args.out)
    examples = [GistExample(**record) for records in world.splits.values() for record in records]
    paths["tokenizer"] = args.out / "tokenizer"
    build_gist_word_tokenizer(examples).save_pretrained(paths["tokenizer"])
    sizes = ", ".join(f"{split} {len(records)}" for split, records in world.splits.items())
    print(f"{sizes} examples; held-out compositions: {len(world.unseen_compositions)}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
