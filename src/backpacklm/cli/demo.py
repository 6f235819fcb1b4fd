"""`backpack demo`: fetch Shakespeare, train a tiny Backpack for a few minutes, sample, show senses."""

from __future__ import annotations

from .options import positive_float


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a tiny Backpack on Shakespeare and show what it learned")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=positive_float, default=3.0, help="training time budget")
    p.add_argument("--data", default="shakespeare", help="built-in dataset name or text files")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..demo import run_demo

    run_demo(args.out, args.minutes, args.data)
