"""`backpack sample`: generate text with the KV cache."""

from __future__ import annotations

from .options import non_negative_int, positive_float, positive_int, probability, seed


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate text from a model")
    p.add_argument("--model", required=True, help="model directory or training run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=positive_float, default=0.8)
    p.add_argument("--top-k", type=non_negative_int, default=0, help="0: no top-k filtering")
    p.add_argument("--top-p", type=probability, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--edit", default=None, metavar="FILE",
                   help="apply the sense edits of this file (see `backpack edit`; a model directory means its edits.json)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..model.loading import load_model
    from ..sampling import sample_text

    model, tokenizer = load_model(args.model, device=args.device)
    extra = {}
    if args.edit:
        from ..senses.edit import edit_overrides, load_edits

        extra["sense_overrides"] = edit_overrides(model, tokenizer, load_edits(args.edit))
    texts = sample_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                        args.top_p, args.seed, args.num_samples, args.greedy, **extra)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
