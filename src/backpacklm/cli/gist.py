"""`backpack gist train|compress|generate|eval|bench`: gist tokens (Mu et al. 2023) for decoder-only models and
encoder-decoder T5 (any --model directory; the family is read from its config)."""

from __future__ import annotations

from pathlib import Path

from ..errors import BackpackError
from .help_format import DefaultsHelpFormatter
from .options import non_negative_int, positive_float, positive_int, seed
from .train import add_training_arguments, adopt_run_settings, report, training_kwargs

FORMAT = DefaultsHelpFormatter


def register(subparsers) -> None:
    group = subparsers.add_parser("gist", help="gist tokens: train, compress prompts, generate, evaluate, benchmark")
    commands = group.add_subparsers(dest="gist_command", required=True)

    p = commands.add_parser("train", help="train a model to compress instructions into gist tokens", formatter_class=FORMAT)
    p.add_argument("--data", required=True, help="Alpaca-format JSON (instruction, input, output)")
    p.add_argument("--val-data", default=None, help="validation JSON (default: 5%% of --data held out)")
    p.add_argument("--out", required=True, help="run directory (checkpoints; the model is OUT/model)")
    p.add_argument("--model", dest="init_from", default=None,
                   help="fine-tune this model directory (any supported causal LM, or T5, with its tokenizer); "
                        "default: train from scratch with --preset")
    p.add_argument("--tokenizer", default=None, help="from scratch: tokenizer folder or 'gpt2' (default: characters)")
    p.add_argument("--gists", type=positive_int, default=1, help="k, gist tokens per instruction")
    p.add_argument("--condition", default="gist", choices=["gist", "pos_control", "neg_control"])
    p.add_argument("--skip-long", action="store_true",
                   help="leave out examples longer than the model's positions (default: stop with an error)")
    add_training_arguments(p, warmup_steps=50, eval_interval=100, eval_batches=10)
    p.set_defaults(func=run_train)

    p = commands.add_parser("compress", help="compress instructions into gist keys/values (T5: encoder keys/values "
                                             "and outputs), saved to one file",
                            formatter_class=FORMAT)
    p.add_argument("--model", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--instructions", help="Alpaca-format JSON (its distinct instructions are compressed)")
    source.add_argument("--prompt", action="append", help="raw prompt text ending with its <GIST> tokens (repeatable)")
    p.add_argument("--gists", type=positive_int, default=None,
                   help="k, with --instructions (default: the model's; a --prompt carries its own <GIST> tokens)")
    p.add_argument("--keep", default="gists", choices=["gists", "all"], help="all: store the whole prefix instead")
    p.add_argument("--out", required=True, help="compressed-prompt file (.safetensors)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.set_defaults(func=run_compress)

    p = commands.add_parser("generate", help="complete inputs after compressed prompts", formatter_class=FORMAT)
    p.add_argument("--model", required=True)
    p.add_argument("--compressed", required=True, help="file from `backpack gist compress`")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--data", help="Alpaca-format JSON: each record's instruction must be in the compressed file")
    inputs.add_argument("--input", help="one input for every compressed prompt ('' for none)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=non_negative_int, default=0)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", default=None, help="folder for generations.json")
    p.set_defaults(func=run_generate)

    p = commands.add_parser("eval", help="ROUGE-L and exact match per split, for one or more gist models",
                            formatter_class=FORMAT)
    p.add_argument("--model", action="append", required=True, help="model directory (repeatable)")
    p.add_argument("--data", action="append", required=True, help="[SPLIT=]FILE, Alpaca-format JSON (repeatable)")
    p.add_argument("--max-examples", type=positive_int, default=None, help="per split")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", required=True, help="folder for quality.json, quality.md, quality_vs_compression.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)

    p = commands.add_parser("bench", help="stored bytes, FLOPs and wall time: no cache vs instruction vs gist caching",
                            formatter_class=FORMAT)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="Alpaca-format JSON (the prompts to time)")
    p.add_argument("--max-prompts", type=positive_int, default=32)
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--new-tokens", type=positive_int, default=16)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--out", required=True, help="folder for savings.json and savings.md")
    p.set_defaults(func=run_bench)


def run_train(args) -> int:
    from ..gist.train import GistTrainConfig, train_gist

    adopt_run_settings(args)
    cfg = GistTrainConfig(data=args.data, val_data=args.val_data, tokenizer=args.tokenizer, gists=args.gists,
                          condition=args.condition, skip_long=args.skip_long, **training_kwargs(args))
    return report(train_gist(cfg))


def _load(model_dir):
    from ..model.loading import load_model

    model, tokenizer = load_model(model_dir)
    if tokenizer is None:
        raise BackpackError(f"{model_dir} has no tokenizer files")
    return model, tokenizer


def run_compress(args) -> None:
    from ..atomic import check_output_file
    from ..gist.cache import compress, compress_texts, is_compressed_file
    from ..gist.data import load_examples

    if args.prompt and args.gists is not None:
        raise BackpackError("--gists applies to --instructions only: a --prompt ends with its own <GIST> tokens")
    check_output_file(args.out, "a compressed-prompt file", is_compressed_file)
    model, tokenizer = _load(args.model)
    if args.prompt:
        compressed = compress_texts(model, tokenizer, args.prompt, args.batch_size, args.keep)
    else:
        instructions = list(dict.fromkeys(e.instruction for e in load_examples(args.instructions, require_output=False)))
        compressed = compress(model, tokenizer, instructions, args.gists, args.keep, args.batch_size)
    compressed.save(args.out)
    per_prompt = compressed.kv_bytes().float().mean().item()
    print(f"compressed {len(compressed)} prompt(s) into {compressed.num_gists} gist token(s) each "
          f"({per_prompt / 1024:.1f} KiB of keys/values per prompt): {args.out}")


def run_generate(args) -> None:
    from ..atomic import check_output_dir
    from ..gist.cache import SamplingConfig, generate_from_compressed, load_compressed
    from ..gist.data import load_examples
    from ..gist.layout import decode_completion

    if args.out:
        check_output_dir(args.out)
    model, tokenizer = _load(args.model)
    compressed = load_compressed(args.compressed, model)
    if args.data:
        examples = load_examples(args.data, require_output=False)
        index = {text: i for i, text in enumerate(compressed.instructions)}
        missing = [e.instruction for e in examples if e.instruction not in index]
        if missing:
            raise BackpackError(f"instruction {missing[0]!r} is not in {args.compressed}; compress it first")
        pairs = [(index[e.instruction], e.instruction, e.input) for e in examples]
    else:
        pairs = [(i, text, args.input) for i, text in enumerate(compressed.instructions)]
    sampling = SamplingConfig(args.max_new_tokens, args.sample, args.temperature, args.top_k, args.seed)
    results = []
    for start in range(0, len(pairs), args.batch_size):
        chunk = pairs[start:start + args.batch_size]
        ids = generate_from_compressed(model, tokenizer, compressed.select([i for i, _, _ in chunk]),
                                       [text for _, _, text in chunk], sampling, first_row=start)
        results += [{"instruction": instr, "input": text, "output": decode_completion(tokenizer, row)}
                    for (_, instr, text), row in zip(chunk, ids)]
    for r in results:
        print(f"[{r['instruction']}] {r['input']!r} -> {r['output']}")
    if args.out:
        from ..atomic import write_json_atomic

        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out) / "generations.json", results)


def _split_files(specs: list[str]) -> dict[str, str]:
    """Split name -> file from `--data [SPLIT=]FILE` options (the name defaults to the file's stem)."""
    files = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else (Path(spec).stem, spec)
        if not name or not path:
            raise BackpackError(f"--data {spec!r}: give SPLIT=FILE or FILE, with a split name and a file")
        if name in files:
            raise BackpackError(f"two --data splits are named {name!r}: give each its own SPLIT= name")
        files[name] = path
    return files


def run_eval(args) -> None:
    from ..atomic import check_output_dir, replacing, write_json_atomic
    from ..gist.evaluate import evaluate_gist, quality_table
    from ..gist.savings import quality_vs_compression_png

    out = check_output_dir(args.out)
    files = _split_files(args.data)
    evaluations = [evaluate_gist(m, files, args.batch_size, args.max_new_tokens, args.max_examples,
                                 progress=not args.no_progress)
                   for m in args.model]
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "quality.json", [e.to_dict() for e in evaluations])
    table = quality_table(evaluations)
    with replacing(out / "quality.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    print(table)
    if any(e.condition == "gist" for e in evaluations):
        from ..gist.data import load_examples
        from ..gist.layout import encode_instruction
        from ..model.loading import load_tokenizer_if_present, resolve_model_dir

        tokenizer = load_tokenizer_if_present(resolve_model_dir(args.model[0]))
        first = load_examples(next(iter(files.values())))
        mean_tokens = sum(len(encode_instruction(tokenizer, e.instruction, 0)) for e in first) / len(first)
        quality_vs_compression_png(evaluations, mean_tokens, out / "quality_vs_compression.png")


def run_bench(args) -> None:
    import torch

    from ..atomic import check_output_dir, replacing, write_json_atomic
    from ..gist.data import load_examples
    from ..gist.savings import measure_savings

    out = check_output_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = _load(args.model)
    examples = load_examples(args.data, require_output=False)[: args.max_prompts]
    report = measure_savings(model, tokenizer, examples, args.batch_sizes, args.new_tokens, args.repeats,
                             name=str(args.model))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "savings.json", report.to_dict())
    with replacing(out / "savings.md") as tmp:
        tmp.write_text(report.table() + "\n", encoding="utf-8")
    print(report.table())
