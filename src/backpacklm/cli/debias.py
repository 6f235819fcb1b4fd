"""`backpack debias --model DIR [DIR...] --out DIR`: gender bias of professions, and how much each method removes
(Backpack: Remove-Sense, Optimize-Sense; other models: Project-Nullspace, Optimize-Nullspace)."""

from __future__ import annotations

from pathlib import Path

from .options import non_negative_int


def register(subparsers) -> None:
    p = subparsers.add_parser("debias", help="gender debiasing through a sense, with Transformer baselines")
    p.add_argument("--model", required=True, nargs="+", action="extend",
                   help="model directories (Backpacks and/or Transformers sharing one tokenizer)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes debias.json, debias.md and debias.png")
    p.add_argument("--professions", type=Path, default=None, metavar="FILE",
                   help="one profession per line (default: the WinoBias occupations that are one token)")
    p.add_argument("--train-templates", type=Path, default=None, metavar="FILE",
                   help="prompt templates to fit scales on, one per line, '{}' = the profession")
    p.add_argument("--test-templates", type=Path, default=None, metavar="FILE", help="prompt templates to evaluate on")
    p.add_argument("--world", type=Path, default=None, metavar="DIR",
                   help="take professions and templates from a synthetic world's truth.json")
    p.add_argument("--sense", type=non_negative_int, default=None, help="the gender sense (default: detected)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..atomic import check_output_dir, replacing, write_json_atomic
    from ..data.tokenizers import tokenizer_difference
    from ..errors import BackpackError
    from ..model.loading import load_model
    from ..senses.debias import DEFAULT_TEMPLATES, debias, debias_png, read_lines

    check_output_dir(args.out)
    professions, templates = None, dict(DEFAULT_TEMPLATES)
    if args.world:
        from ..worlds.senses import load_truth

        truth = load_truth(args.world)
        professions, templates = list(truth["pronouns"]["rates_he"]), truth["pronouns"]["templates"]
    if args.professions:
        professions = read_lines(args.professions, "professions")
    if args.train_templates:
        templates["train"] = read_lines(args.train_templates, "templates")
    if args.test_templates:
        templates["test"] = read_lines(args.test_templates, "templates")
    loaded = [load_model(path) for path in args.model]
    tokenizers = [(path, tok) for path, (_, tok) in zip(args.model, loaded) if tok is not None]
    if not tokenizers:
        raise BackpackError("none of the model directories has a tokenizer")
    tokenizer = tokenizers[0][1]
    for path, other in tokenizers[1:]:
        if difference := tokenizer_difference(tokenizer, other):
            raise BackpackError(f"{path} has a different tokenizer than {tokenizers[0][0]} ({difference}); the models "
                                "must share one")
    report = debias([m for m, _ in loaded], tokenizer, professions, templates, args.sense)
    if professions and len(report.professions) < len(professions):
        left_out = [p for p in professions if p not in report.professions]
        print(f"left out {len(left_out)} profession(s) that are not one token: {', '.join(left_out)}")
    table = report.markdown()
    print(f"gender sense: {report.sense}\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "debias.json", {"models": [str(m) for m in args.model], **report.to_dict()})
    with replacing(args.out / "debias.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    debias_png(report, args.out / "debias.png")
    print(f"wrote {args.out}/debias.json, debias.md and debias.png")
