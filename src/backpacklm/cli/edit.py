"""`backpack edit`: knowledge editing by sense replacement. One shot (measure p(b) vs p(a) after prompts that
mention the word, and the perplexity change on unrelated text), or an interactive loop that continues each prompt
typed on stdin with and without the edit (like the paper's MacBook -> HP demo)."""

from __future__ import annotations

import sys
from pathlib import Path

from .options import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("edit", help="edit what a word predicts by replacing a direction in its senses")
    p.add_argument("--model", required=True, help="Backpack model directory")
    p.add_argument("--word", help="the word w to edit")
    p.add_argument("--from", dest="source", help="what w predicts now (a)")
    p.add_argument("--to", dest="target", help="what w should predict (b)")
    p.add_argument("--edits", type=Path, default=None, metavar="FILE", help="apply the edits of this file instead")
    p.add_argument("--prompt", action="append", default=[],
                   help="prompt mentioning w to measure on (repeatable; default 'The w', none with --interactive)")
    p.add_argument("--unrelated", type=Path, default=None, metavar="FILE",
                   help="unrelated text whose perplexity change is reported")
    p.add_argument("--save", nargs="?", const="", default=None, metavar="FILE",
                   help="save the edit (default file: MODEL/edits.json)")
    p.add_argument("--interactive", action="store_true", help="read prompts from stdin; print both continuations")
    p.add_argument("--max-new-tokens", type=positive_int, default=30)
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="writes edit.json")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..atomic import check_output_dir, write_json_atomic
    from ..data.prepare import read_document
    from ..data.tokenizers import check_encodable
    from ..errors import BackpackError
    from ..model.loading import load_model
    from ..sampling import sample_text
    from ..senses.edit import SenseEdit, edit_overrides, edits_path, load_edits, measure_edit, save_edits

    if args.out:
        check_output_dir(args.out)
    if args.save is not None:
        edits_path(args.save or args.model)  # refused before any work if it would replace another kind of file
    if args.edits and (args.word or args.source or args.target):
        raise BackpackError("give either --word, --from and --to, or --edits FILE, not both")
    if args.edits:
        edits = load_edits(args.edits)
    elif args.word and args.source and args.target:
        edits = [SenseEdit(args.word, args.source, args.target)]
    else:
        raise BackpackError("give --word, --from and --to, or --edits FILE")
    model, tokenizer = load_model(args.model)
    if tokenizer is None:
        raise BackpackError(f"{args.model} has no tokenizer")
    overrides = edit_overrides(model, tokenizer, edits)  # checks every word before anything is written
    unrelated = read_document(args.unrelated) if args.unrelated else None
    reports = []
    measured = edits if args.prompt or not args.interactive else []  # interactive alone: the typed prompts are it
    for edit in measured:
        prompts = args.prompt or [f"The {edit.word}"]
        if not args.prompt:
            try:
                check_encodable(tokenizer, prompts[0])
            except BackpackError as err:
                raise BackpackError(f"the default prompt {prompts[0]!r} does not fit this model ({err}); "
                                    "give --prompt with a prompt that mentions the word") from None
        report = measure_edit(model, tokenizer, edit, prompts, unrelated)
        reports.append(report.to_dict())
        print(f"{edit.word}: {edit.source} -> {edit.target}  (p(b) > p(a) after {report.moved}/{len(prompts)} prompts)")
        for e in report.prompts:
            print(f"  {e.prompt!r}: p({edit.source}) {e.p_source_before:.4f} -> {e.p_source_after:.4f}, "
                  f"p({edit.target}) {e.p_target_before:.4f} -> {e.p_target_after:.4f}")
        if report.perplexity_before is not None:
            print(f"  unrelated text perplexity {report.perplexity_before:.3f} -> {report.perplexity_after:.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "edit.json", {"model": str(args.model), "reports": reports})
    # saved once the prompts and the unrelated text have been measured: a bad one leaves an older file as it was
    if args.save is not None:
        path = save_edits(args.save or args.model, edits)  # a model directory: its edits.json
        print(f"saved {len(edits)} edit(s) to {path}")
    if args.interactive:
        print("type a prompt (empty line or end of input to stop)", file=sys.stderr)
        for line in sys.stdin:
            prompt = line.rstrip("\n")
            if not prompt:
                break
            for label, kwargs in (("original", {}), ("edited", {"sense_overrides": overrides})):
                text = sample_text(model, tokenizer, prompt, args.max_new_tokens, greedy=True, **kwargs)[0]
                print(f"[{label}] {text}")
