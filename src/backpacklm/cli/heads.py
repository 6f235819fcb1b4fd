"""`backpack heads importance|prune|ffn|induction|eval`: attention heads and FFNs of any supported causal LM.

Every command writes JSON (and PNGs) into --out. Tasks come from a JSONL file (--task, repeatable) or a built-in
synthetic in-context task (--builtin copy|map|pairs, repeatable).
"""

from __future__ import annotations

import json
from pathlib import Path

from .options import non_negative_int, positive_int, seed


def _percent_list(text: str) -> list[float]:
    from ..errors import BackpackError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BackpackError(f"'{text}' is not a comma-separated list of percentages") from None


def _int_list(text: str) -> list[int]:
    from ..errors import BackpackError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BackpackError(f"'{text}' is not a comma-separated list of integers") from None


def _model_args(p, task: bool = True, choice_scoring: bool = True) -> None:
    p.add_argument("--model", required=True, help="model directory or training run directory (any supported HF causal LM)")
    p.add_argument("--out", required=True, help="folder for the JSON results and PNGs")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (ignored with --device-map)")
    p.add_argument("--device-map", default=None, help="e.g. auto: shard a large model over the available devices")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-progress", action="store_true")
    if task:
        p.add_argument("--task", action="append", default=[], help="JSONL task file (repeatable)")
        p.add_argument("--builtin", action="append", default=[], help="built-in task: copy, map, pairs (repeatable)")
        p.add_argument("--n", type=positive_int, default=200, help="evaluation examples of a built-in task")
        p.add_argument("--k", type=non_negative_int, default=None, help="shots (default: 0, or the built-in task's own default)")
        p.add_argument("--batch-size", type=positive_int, default=8)
    if task and choice_scoring:  # accuracy-based commands; importance scores the gold continuation's loss instead
        p.add_argument("--length-normalize", default="none", choices=["none", "token", "char"],
                       help="multiple choice: score per token / per character")


def _masks_args(p) -> None:
    p.add_argument("--mask-heads", default="", help="heads to remove, LAYER.HEAD comma-separated, e.g. 0.1,3.2")
    p.add_argument("--mask-ffn", default="", help="FFN layers to remove, comma-separated")


def register(subparsers) -> None:
    heads = subparsers.add_parser("heads", help="attention heads and FFNs: importance, pruning, induction, task eval")
    sub = heads.add_subparsers(dest="heads_command", required=True)

    p = sub.add_parser("importance", help="head importance on a task (Bansal et al. eq. 8-9)")
    _model_args(p, choice_scoring=False)
    _masks_args(p)
    p.add_argument("--method", default="token", choices=["token", "gate"],
                   help="token: per-token |a.dL/da| (paper); gate: per-example |dL/dg| (Michel et al.)")
    p.add_argument("--normalize", default="none", choices=["none", "layer"], help="layer: per-layer L2 normalisation")
    p.set_defaults(func=_in_out_dir(run_importance))

    p = sub.add_parser("prune", help="pruning curves: heads, FFNs, the grid, ranking transfer across tasks")
    _model_args(p)
    p.add_argument("--importance", action="append", default=[],
                   help="head importance JSON/.npy to rank by (repeatable; default: computed on each task)")
    p.add_argument("--method", default="token", choices=["token", "gate"])
    p.add_argument("--normalize", default="none", choices=["none", "layer"])
    p.add_argument("--head-percents", default="0,10,20,30,40,50,60,70,80,90")
    p.add_argument("--ffn-percents", default="0,10,20,30,40,50")
    p.add_argument("--no-ffn", action="store_true", help="skip the FFN curve and the grid")
    p.add_argument("--grid", action="store_true", help="also the heads x FFNs grid")
    p.add_argument("--transfer-percent", type=float, default=50.0, help="heads pruned when rankings are transferred")
    p.set_defaults(func=_in_out_dir(run_prune))

    p = sub.add_parser("ffn", help="FFN importance: accuracy drop without each layer's FFN")
    _model_args(p)
    p.set_defaults(func=_in_out_dir(run_ffn))

    p = sub.add_parser("induction", help="prefix-matching and copying scores per head")
    _model_args(p, task=False)
    p.add_argument("--data", default=None, help="prepared data folder: its token counts exclude the most and least "
                                                "frequent tokens from the probes")
    p.add_argument("--exclude", type=float, default=None,
                   help="with --data: fraction excluded at each end of the frequency ranking (default 0.04)")
    p.add_argument("--lengths", default="10,16,25", help="lengths of the random blocks (each repeated 4 times)")
    p.add_argument("--sequences", type=positive_int, default=8, help="probe sequences per length")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--importance", default=None, help="head importance file: report capacity retained after pruning")
    p.add_argument("--head-percents", default="0,10,20,30,40,50,60,70,80,90")
    p.set_defaults(func=_in_out_dir(run_induction))

    p = sub.add_parser("eval", help="few-shot task accuracy, optionally with heads/FFNs removed")
    _model_args(p)
    _masks_args(p)
    p.add_argument("--prune-percent", type=float, default=None, help="remove this %% of heads by --importance")
    p.add_argument("--importance", default=None, help="head importance file for --prune-percent")
    p.set_defaults(func=_in_out_dir(run_eval))


# ---------------------------------------------------------------------------------------------------- shared

def _load(args):
    """(model, tokenizer) from --model; with --device-map accelerate places the layers (gates follow them)."""
    from ..heads.adapters import adapter_for
    from ..model.loading import load_model

    kwargs = {"device_map": args.device_map} if args.device_map else {}
    model, tokenizer = load_model(args.model, device=None if args.device_map else args.device, **kwargs)
    adapter_for(model)  # unsupported architecture: fail before any work
    return model, tokenizer


def _tasks(args, tokenizer) -> list[tuple[object, int]]:
    """[(task, k)] from --task / --builtin."""
    from ..errors import BackpackError
    from ..heads.tasks import builtin_task, check_task_encodable, load_task

    if tokenizer is None:
        raise BackpackError("the model directory has no tokenizer to build task prompts with")
    if not args.task and not args.builtin:
        raise BackpackError("give a task: --task FILE.jsonl or --builtin copy|map|pairs")
    tasks = [(load_task(path), args.k or 0) for path in args.task]
    if args.builtin:
        from ..worlds.icl_tasks import DEFAULT_SHOTS

        tasks += [(builtin_task(name, n=args.n, seed=args.seed), args.k if args.k is not None else
                   DEFAULT_SHOTS.get(name, 0)) for name in args.builtin]
    if args.batch_size < 1:
        raise BackpackError(f"batch size must be >= 1, got {args.batch_size}")
    by_file: dict[str, list[str]] = {}  # result files are named by the task, made file-safe
    for task, _ in tasks:
        by_file.setdefault(_safe(task.name), []).append(task.name)
    if same := next((names for names in by_file.values() if len(names) > 1), None):
        raise BackpackError(f"tasks {' and '.join(map(repr, same))} would write the same result files (a task's name "
                            "is its header name, else its file name): rename one")
    for task, _ in tasks:
        check_task_encodable(tokenizer, task)
    return tasks


def _masks(args, model):
    from ..heads.adapters import adapter_for, parse_heads, parse_layers
    from ..heads.gates import ffn_mask_without, head_mask_without

    adapter = adapter_for(model)
    heads = parse_heads(getattr(args, "mask_heads", ""), adapter)
    layers = parse_layers(getattr(args, "mask_ffn", ""), adapter)
    return (head_mask_without(adapter, heads) if heads else None,
            ffn_mask_without(adapter, layers) if layers else None)


def _in_out_dir(run):
    """`run` inside its --out folder: created first (an existing file is an error), removed again if the command
    fails before writing to it."""
    def wrapped(args) -> None:
        from ..atomic import output_dir

        with output_dir(args.out):
            run(args)

    return wrapped


def _write(path: Path, payload) -> None:
    from ..atomic import write_json_atomic

    write_json_atomic(path, payload)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# ---------------------------------------------------------------------------------------------------- commands

def run_importance(args) -> None:
    from ..heads.importance import head_importance

    model, tokenizer = _load(args)
    head_mask, ffn_mask = _masks(args, model)
    out = Path(args.out)
    for task, k in _tasks(args, tokenizer):
        result = head_importance(model, tokenizer, task, k=k, seed=args.seed, batch_size=args.batch_size,
                                 method=args.method, normalize=args.normalize, head_mask=head_mask,
                                 ffn_mask=ffn_mask, progress=not args.no_progress)
        paths = result.save(out, f"importance_{_safe(task.name)}")
        top = ", ".join(f"{l}.{h}" for l, h in result.ranking()[:5])
        print(f"{task.name}: {result.examples} examples, answer loss {result.loss:.3f} nats/token; "
              f"most important heads {top}; wrote {paths['json']}")


def _importances(args, model, tokenizer, tasks):
    """task name -> HeadImportance (from --importance files in task order, else computed)."""
    from ..errors import BackpackError
    from ..heads.adapters import adapter_for
    from ..heads.importance import HeadImportance, head_importance

    if args.importance and len(args.importance) not in (1, len(tasks)):
        raise BackpackError(f"give one --importance file, or one per task ({len(tasks)})")
    result = {}
    for i, (task, k) in enumerate(tasks):
        if args.importance:
            result[task.name] = HeadImportance.load(args.importance[min(i, len(args.importance) - 1)],
                                                    adapter_for(model).shape)
        else:
            result[task.name] = head_importance(model, tokenizer, task, k=k, seed=args.seed,
                                                batch_size=args.batch_size, method=args.method,
                                                normalize=args.normalize, progress=not args.no_progress)
    return result


def run_prune(args) -> None:
    from ..errors import BackpackError
    from ..heads.ffn import ffn_importance
    from ..heads.pruning import (
        aggregate_scores, check_percents, ffn_pruning_curve, head_pruning_curve, pruning_grid, ranking_transfer,
        save_curves, save_grid,
    )

    if args.grid and args.no_ffn:
        raise BackpackError("--grid needs the FFN ranking: drop --no-ffn")
    head_percents = check_percents(_percent_list(args.head_percents))
    ffn_percents = check_percents(_percent_list(args.ffn_percents))
    check_percents([args.transfer_percent])
    model, tokenizer = _load(args)
    tasks = _tasks(args, tokenizer)
    out = Path(args.out)
    importances = _importances(args, model, tokenizer, tasks)
    for name, imp in importances.items():
        imp.save(out, f"importance_{_safe(name)}")
    progress = not args.no_progress
    summary = {"tasks": [t.name for t, _ in tasks], "head_curves": [], "ffn_curves": []}
    head_curves = []
    for task, k in tasks:
        common = dict(k=k, seed=args.seed, batch_size=args.batch_size, length_normalize=args.length_normalize,
                      progress=progress)
        head_curves.append(head_pruning_curve(model, tokenizer, task, importances[task.name].scores, head_percents,
                                              ranking=task.name, **common))
        if len(tasks) > 1:
            scores = aggregate_scores([imp.scores for imp in importances.values()])
            head_curves.append(head_pruning_curve(model, tokenizer, task, scores, head_percents, ranking="aggregate",
                                                  **common))
        if not args.no_ffn:
            ffn = ffn_importance(model, tokenizer, task, progress=progress, **{k_: v for k_, v in common.items()
                                                                                if k_ != "progress"})
            ffn.save(out, f"ffn_importance_{_safe(task.name)}")
            curve = ffn_pruning_curve(model, tokenizer, task, ffn.scores, ffn_percents, ranking=task.name, **common)
            save_curves(out, [curve], f"ffn_pruning_{_safe(task.name)}")
            summary["ffn_curves"].append(curve.to_dict())
            print(f"{task.name}: FFN pruning " + ", ".join(f"{p:g}%: {a:.3f}" for p, a in
                                                            zip(curve.percents, curve.accuracies)))
            if args.grid:
                grid = pruning_grid(model, tokenizer, task, importances[task.name].scores, ffn.scores, head_percents,
                                    ffn_percents, **common)
                save_grid(out, grid, f"pruning_grid_{_safe(task.name)}")
    for curve in head_curves:
        print(f"{curve.task} (ranking {curve.ranking}): head pruning " +
              ", ".join(f"{p:g}%: {a:.3f}" for p, a in zip(curve.percents, curve.accuracies)))
    save_curves(out, head_curves, "head_pruning")
    summary["head_curves"] = [c.to_dict() for c in head_curves]
    if len(tasks) > 1:
        sources = {name: imp.scores for name, imp in importances.items()}
        sources["aggregate"] = aggregate_scores(list(sources.values()))
        transfer = ranking_transfer(model, tokenizer, {t.name: t for t, _ in tasks}, sources, args.transfer_percent,
                                    k={t.name: k for t, k in tasks}, seed=args.seed, batch_size=args.batch_size,
                                    length_normalize=args.length_normalize, progress=progress)
        summary["transfer"] = transfer.to_dict()
        print("rank correlation (Spearman over head scores): " + json.dumps(
            {a: {b: round(v, 3) for b, v in row.items()} for a, row in transfer.correlation.items()}))
    _write(out / "prune.json", summary)
    print(f"wrote {out / 'prune.json'} and PNGs in {out}")


def run_ffn(args) -> None:
    from ..heads.ffn import ffn_importance

    model, tokenizer = _load(args)
    out = Path(args.out)
    for task, k in _tasks(args, tokenizer):
        result = ffn_importance(model, tokenizer, task, k=k, seed=args.seed, batch_size=args.batch_size,
                                length_normalize=args.length_normalize, progress=not args.no_progress)
        paths = result.save(out, f"ffn_importance_{_safe(task.name)}")
        print(f"{task.name}: accuracy {result.accuracy:.3f}; without FFN of layer " +
              ", ".join(f"{l}: {a:.3f}" for l, a in enumerate(result.accuracy_without)) + f"; wrote {paths['json']}")


def run_induction(args) -> None:
    import numpy as np

    from ..errors import BackpackError
    from ..heads.adapters import adapter_for
    from ..heads.induction import capacity_retained, induction_scores

    lengths = _int_list(args.lengths)
    head_percents = _percent_list(args.head_percents)
    model, tokenizer = _load(args)
    counts = None
    if args.exclude is not None and not args.data:
        raise BackpackError("--exclude needs --data (the token counts it ranks by)")
    if args.data:
        from ..data.dataset import TokenData

        data = TokenData(args.data)
        data.check_tokenizer(tokenizer, args.model)
        train = data.train
        if len(train) and int(train.max()) >= model.config.vocab_size:
            raise BackpackError(f"{args.data}: token ids beyond the model's vocabulary of {model.config.vocab_size}")
        counts = np.bincount(np.asarray(train), minlength=model.config.vocab_size)
    if args.sequences < 1:
        raise BackpackError(f"--sequences must be >= 1, got {args.sequences}")
    importance = None
    if args.importance:  # read before the probes run: a bad file fails first
        from ..heads.importance import HeadImportance

        importance = HeadImportance.load(args.importance, adapter_for(model).shape).scores
    scores = induction_scores(model, tokenizer, lengths=lengths, sequences_per_length=args.sequences,
                              repeats=args.repeats, seed=args.seed, token_counts=counts,
                              exclude=0.04 if args.exclude is None else args.exclude,
                              progress=not args.no_progress)
    out = Path(args.out)
    if importance is not None:
        scores.extra["capacity_retained"] = [capacity_retained(scores.prefix_matching, importance, head_percents,
                                                               "prefix_matching").to_dict()]
        if scores.copying is not None:
            scores.extra["capacity_retained"].append(
                capacity_retained(scores.copying, importance, head_percents, "copying").to_dict())
        from ..heads.plots import pruning_curves

        pruning_curves({c["score"]: (c["percents"], c["share"]) for c in scores.extra["capacity_retained"]},
                       out / "capacity_retained.png", xlabel="% heads removed (lowest importance first)",
                       title="induction capacity retained")
    paths = scores.save(out)
    top = ", ".join(f"{l}.{h} ({s:.2f})" for l, h, s in scores.top_heads(3))
    line = f"prefix matching, top heads: {top}"
    if scores.copying is not None:
        line += "; copying, top: " + ", ".join(f"{l}.{h} ({s:.2f})" for l, h, s in scores.top_heads(3, "copying"))
    print(line + f"; wrote {paths['json']}")


def run_eval(args) -> None:
    from ..errors import BackpackError
    from ..heads.pruning import check_percents, head_prune_mask
    from ..heads.tasks import evaluate_task
    from ..heads.gates import masking

    model, tokenizer = _load(args)
    head_mask, ffn_mask = _masks(args, model)
    if args.prune_percent is not None:
        check_percents([args.prune_percent])
        if not args.importance:
            raise BackpackError("--prune-percent needs --importance FILE to rank the heads by")
        from ..heads.adapters import adapter_for
        from ..heads.importance import HeadImportance

        scores = HeadImportance.load(args.importance, adapter_for(model).shape).scores
        pruned = head_prune_mask(scores, args.prune_percent)
        head_mask = pruned if head_mask is None else head_mask * pruned
    out = Path(args.out)
    results = []
    for task, k in _tasks(args, tokenizer):
        with masking(model, head_mask, ffn_mask):
            result = evaluate_task(model, tokenizer, task, k=k, seed=args.seed, batch_size=args.batch_size,
                                   length_normalize=args.length_normalize)
        payload = result.to_dict()
        payload["removed_heads"] = [] if head_mask is None else [
            f"{l}.{h}" for l, h in (head_mask == 0).nonzero().tolist()]
        payload["removed_ffn"] = [] if ffn_mask is None else (ffn_mask == 0).nonzero()[:, 0].tolist()
        results.append(payload)
        print(f"{task.name}: accuracy {result.accuracy:.3f} over {result.n} examples ({k}-shot, chance "
              f"{result.chance:.3f}), {len(payload['removed_heads'])} heads and {len(payload['removed_ffn'])} FFNs removed")
    _write(out / "eval.json", results)
