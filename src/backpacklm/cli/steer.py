"""`backpack steer`: topic control by sense re-weighting (Backpack) or PPLM-BoW (Transformer), scored and tabulated."""

from __future__ import annotations


from ..senses.pplm import PPLMSettings
from .help_format import DefaultsHelpFormatter
from ..senses.steering import PPLM_STEP_SIZES, SamplingSettings
from .options import (
    non_negative_float, non_negative_int, positive_float, positive_int, seed, unit_interval,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("steer", help="steer generation towards a topic (sense re-weighting or PPLM)",
                              formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (a Backpack for sense re-weighting)")
    p.add_argument("--topic", required=True, action="append", help="bag-of-words file, one word per line (repeatable)")
    p.add_argument("--strength", type=int, nargs="+", default=[0, 1, 2, 3], choices=range(4),
                   help="0-3: sense weights (1,1,1,1) (1.5,1.5,1.3,1) (2.2,2.2,1.5,1) (3.3,3.3,3,1); PPLM: step size index")
    p.add_argument("--method", choices=["sense", "pplm"], default=None,
                   help="default: sense for a Backpack, pplm for any other model")
    p.add_argument("--compare", metavar="TRANSFORMER_DIR", default=None,
                   help="also run PPLM on this Transformer and write the side-by-side table")
    p.add_argument("--prompt", action="append", default=None, help="prompt (repeatable; default: start of a document)")
    p.add_argument("--prompts", default=None, help="file of prompts, one per line")
    sampling = SamplingSettings()
    p.add_argument("--samples", type=positive_int, default=sampling.samples, help="samples per prompt")
    p.add_argument("--length", type=positive_int, default=sampling.length, help="new tokens per sample")
    p.add_argument("--temperature", type=positive_float, default=sampling.temperature)
    p.add_argument("--top-k", type=non_negative_int, default=sampling.top_k, help="0: no top-k filtering")
    p.add_argument("--seed", type=seed, default=sampling.seed)
    pplm = PPLMSettings()
    p.add_argument("--pplm-step-sizes", type=non_negative_float, nargs=4, default=list(PPLM_STEP_SIZES), metavar="S",
                   help="PPLM step size at strengths 0..3")
    p.add_argument("--iterations", type=non_negative_int, default=pplm.iterations, help="PPLM gradient steps per token")
    p.add_argument("--window", type=non_negative_int, default=pplm.window, help="PPLM: perturb this many recent positions (0: all)")
    p.add_argument("--kl-scale", type=non_negative_float, default=pplm.kl_scale)
    p.add_argument("--gm-scale", type=unit_interval, default=pplm.gm_scale)
    p.add_argument("--gamma", type=non_negative_float, default=pplm.gamma, help="PPLM gradient-norm exponent")
    p.add_argument("--reference-model", default=None, help="model for perplexity (default: each method's own model)")
    p.add_argument("--mauve-references", default=None, help="reference texts for MAUVE, one per line")
    p.add_argument("--mauve-model", default=None, help="feature model for MAUVE (default: the reference model)")
    p.add_argument("--scorer", default=None, help="on-topic judge MODULE:FUNCTION or FILE.py:FUNCTION, text -> bool "
                                                  "(default: at least one topic word)")
    p.add_argument("--out", required=True, help="folder for steer.json, steer.md, steer.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _read_lines(path: str, what: str) -> list[str]:
    from ..errors import BackpackError

    try:
        lines = [line.strip() for line in open(path, encoding="utf-8-sig").read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise BackpackError(f"cannot read {what} file {path}: {err}") from None
    if not lines:
        raise BackpackError(f"{what} file {path} is empty")
    return lines


def load_scorer(spec: str):
    """A callable from MODULE:FUNCTION or FILE.py:FUNCTION."""
    import importlib
    import importlib.util

    from ..errors import BackpackError

    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise BackpackError(f"scorer must be MODULE:FUNCTION or FILE.py:FUNCTION, not {spec!r}")
    try:
        if source.endswith(".py"):
            loaded = importlib.util.spec_from_file_location("backpack_scorer", source)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
        scorer = getattr(module, name)
    except Exception as err:  # the user's file runs here: any error in it is theirs to see, in one line
        raise BackpackError(f"cannot load scorer {spec!r}: {type(err).__name__}: {err}") from None
    if not callable(scorer):
        raise BackpackError(f"scorer {spec!r} is not callable")

    def judge(text: str) -> bool:
        try:
            return bool(scorer(text))
        except Exception as err:
            raise BackpackError(f"scorer {spec!r} failed on a generation: {type(err).__name__}: {err}") from None

    return judge


def _load_companion(path: str, args, tokenizer):
    """A second model (--compare, --reference-model, --mauve-model); it must read the same token ids as --model."""
    from ..data.tokenizers import tokenizer_difference
    from ..errors import BackpackError
    from ..model.loading import load_model

    other, other_tokenizer = load_model(path, device=args.device)
    if other_tokenizer is not None and (difference := tokenizer_difference(tokenizer, other_tokenizer)):
        raise BackpackError(f"{path} has a different tokenizer than {args.model} ({difference}); it must read the "
                            "same token ids")
    return other


def run(args) -> None:
    from pathlib import Path

    from ..atomic import check_output_dir, replacing, write_json_atomic
    from ..errors import BackpackError
    from ..model.loading import load_model
    from ..senses.steering import evaluate_steering, plot_steering
    from ..senses.topic import read_topic_words, make_topic

    out = check_output_dir(args.out)
    topic_words = [(Path(path).stem, read_topic_words(path)) for path in args.topic]  # bad topic files fail first
    model, tokenizer = load_model(args.model, device=args.device)
    if tokenizer is None:
        raise BackpackError(f"{args.model} has no tokenizer")
    is_backpack = model.config.model_type == "backpack"
    method = args.method or ("sense" if is_backpack else "pplm")
    models = {method: model}
    if args.compare:
        if method != "sense":
            raise BackpackError("--compare runs sense re-weighting on --model (a Backpack) against PPLM on the Transformer")
        models["pplm"] = _load_companion(args.compare, args, tokenizer)
    prompts = (args.prompt or []) + (_read_lines(args.prompts, "prompts") if args.prompts else [])
    topics = [make_topic(tokenizer, words, model.config.vocab_size, name) for name, words in topic_words]
    skipped = [f"topic {t.name}: {len(t.skipped)} of {len(t.words)} words skipped (the tokenizer "
               f"cannot encode them): {', '.join(t.skipped[:20])}{' ...' if len(t.skipped) > 20 else ''}"
               for t in topics if t.skipped]
    for line in skipped:
        print(line)
    reference = _load_companion(args.reference_model, args, tokenizer) if args.reference_model else None
    mauve_model = _load_companion(args.mauve_model, args, tokenizer) if args.mauve_model else None
    references = _read_lines(args.mauve_references, "MAUVE reference") if args.mauve_references else None
    if references is not None and mauve_model is None and reference is None:
        mauve_model = model  # features from the (first) model itself
    report = evaluate_steering(
        models, tokenizer, topics, args.strength, prompts,
        SamplingSettings(args.length, args.samples, args.temperature, args.top_k, args.seed),
        PPLMSettings(iterations=args.iterations, window=args.window, kl_scale=args.kl_scale,
                     gm_scale=args.gm_scale, gamma=args.gamma),
        args.pplm_step_sizes, reference, load_scorer(args.scorer) if args.scorer else None, mauve_model, references,
        progress=not args.no_progress,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "steer.json", report.to_dict())
    table = report.markdown() + "".join(f"\n\n{line}" for line in skipped)
    with replacing(out / "steer.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    with replacing(out / "steer.png") as tmp:
        plot_steering(report, tmp)
    print(table)
    for row in report.rows:
        if row.examples:
            print(f"\n[{row.method} {row.topic} strength {row.strength}] {row.examples[0]!r}")
    print(f"\nwrote {out / 'steer.json'}, {out / 'steer.md'}, {out / 'steer.png'}")
