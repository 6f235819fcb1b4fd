"""`backpack senses`: what each sense of a token raises and lowers in the output vocabulary."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("senses", help="sense projections of tokens")
    p.add_argument("--model", required=True, help="Backpack model directory or training run directory")
    p.add_argument("--token", required=True, action="append", help="word or token (repeat for several)")
    p.add_argument("--top", type=int, default=10, help="tokens listed per sense and direction")
    p.add_argument("--json", default=None, help="also write the projections to this JSON file")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..model.loading import load_model
    from ..senses.projection import format_projection, sense_projection

    model, tokenizer = load_model(args.model)
    projections = [sense_projection(model, tokenizer, word, args.top) for word in args.token]
    for projection in projections:
        print(format_projection(projection))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([p.to_dict() for p in projections], f, indent=1)
