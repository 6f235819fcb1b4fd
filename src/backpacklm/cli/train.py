"""`backpack train`: train or resume a Backpack (or the baseline Transformer) on prepared data."""

from __future__ import annotations

import argparse
import signal

from ..model.config import PRESETS
from ..model.transformer import ARCHITECTURES
from .help_format import DefaultsHelpFormatter
from .options import (
    learning_rate, non_negative_float, non_negative_int, positive_float, positive_int, seed, unit_interval,
)

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "num_senses", "n_positions", "vocab_size")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train or resume a model", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="prepared data directory (backpack data prepare)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, loss_curve.png")
    p.add_argument("--init-from", default=None, help="start from this model directory's weights")
    add_training_arguments(p)
    p.set_defaults(func=run)


class _StoreGiven(argparse.Action):
    """argparse's plain store that also notes the option in `given_options`, so --resume can tell an option left
    at its default from one given with the default's value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given_options = getattr(namespace, "given_options", frozenset()) | {self.dest}


def add_training_arguments(p, warmup_steps: int = 100, eval_interval: int = 250, eval_batches: int = 20) -> None:
    """Model, schedule and run options shared by `backpack train` and `backpack gist train`."""
    for name in (None, "store"):  # argparse's names for its plain store: every valued option below records itself
        p.register("action", name, _StoreGiven)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--arch", default="backpack", choices=ARCHITECTURES)
    for name in MODEL_FIELDS:
        p.add_argument(f"--{name.replace('_', '-')}", type=positive_int, default=None, help="override the preset")
    p.add_argument("--dropout", type=unit_interval, default=None, help="embedding, attention and residual dropout")
    p.add_argument("--max-steps", type=positive_int, default=None, help="total optimizer steps (default 1000, or the resumed run's)")
    p.add_argument("--stop-after", type=positive_int, default=None, help="checkpoint and stop at this step (schedule unchanged)")
    p.add_argument("--max-minutes", type=positive_float, default=None, help="checkpoint and stop after this wall time")
    p.add_argument("--batch-size", type=positive_int, default=12, help="sequences per optimizer step (all processes)")
    p.add_argument("--block-size", type=positive_int, default=None, help="tokens per sequence (default: model positions)")
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--lr", type=learning_rate, default=1e-3)
    p.add_argument("--min-lr", type=non_negative_float, default=None, help="default lr/10")
    p.add_argument("--warmup-steps", type=non_negative_int, default=warmup_steps)
    p.add_argument("--decay", default="cosine", choices=["cosine", "linear", "constant"])
    p.add_argument("--weight-decay", type=non_negative_float, default=0.1)
    p.add_argument("--grad-clip", type=non_negative_float, default=1.0)
    p.add_argument("--eval-interval", type=positive_int, default=eval_interval)
    p.add_argument("--eval-batches", type=positive_int, default=eval_batches)
    p.add_argument("--log-interval", type=positive_int, default=10)
    p.add_argument("--checkpoint-interval", type=positive_int, default=None, help="default: eval interval")
    p.add_argument("--seed", type=seed, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast: auto is bfloat16 on a GPU that has it, else float32; float16 only on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--no-progress", action="store_true")


def training_kwargs(args) -> dict:
    """TrainConfig fields from the parsed `add_training_arguments` options (plus --out and --init-from)."""
    overrides = {name: getattr(args, name) for name in MODEL_FIELDS if getattr(args, name) is not None}
    if args.dropout is not None:
        overrides.update(resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    return dict(
        out=args.out, preset=args.preset, arch=args.arch, model_overrides=overrides,
        init_from=args.init_from, max_steps=args.max_steps, stop_after=args.stop_after, max_minutes=args.max_minutes,
        batch_size=args.batch_size, block_size=args.block_size, grad_accum=args.grad_accum, lr=args.lr,
        min_lr=args.min_lr, warmup_steps=args.warmup_steps, decay=args.decay, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, eval_interval=args.eval_interval, eval_batches=args.eval_batches,
        log_interval=args.log_interval, checkpoint_interval=args.checkpoint_interval, seed=args.seed,
        device=args.device, dtype=args.dtype, compile=args.compile, threads=args.threads, resume=args.resume,
        progress=not args.no_progress,
    )


def run(args) -> int:
    from ..train.loop import TrainConfig, train

    adopt_run_settings(args)
    summary = train(TrainConfig(data=args.data, **training_kwargs(args)))
    return report(summary)


def adopt_run_settings(args) -> None:
    """--resume: each update setting not given on the command line (batch size, accumulation, lr, min lr, warmup,
    decay, weight decay, clipping) takes the run's own value from its latest checkpoint, so `--data D --out R
    --resume` continues any run; a value given that differs from the run's, even the default's, is refused by the
    loop."""
    from pathlib import Path

    from ..errors import BackpackError
    from ..train.checkpoint import latest_checkpoint, read_state_json

    checkpoint = latest_checkpoint(Path(args.out)) if args.resume else None
    if checkpoint is None:
        return  # nothing to adopt; the loop says what is missing
    try:
        saved = read_state_json(checkpoint).get("settings")
    except BackpackError:
        return  # the loop reports the broken training state
    if not isinstance(saved, dict):
        return
    given = getattr(args, "given_options", frozenset())
    for name, value in saved.items():
        if hasattr(args, name) and name not in given:
            setattr(args, name, value)


def report(summary: dict) -> int:
    """Print how the run ended; the exit status: 0, or 128 + the signal's number when a signal stopped it (the
    checkpoint is written either way; --resume continues)."""
    if summary.get("checkpoint"):
        val = summary["val_loss"]
        print(f"trained to step {summary['step']}: val loss {val:.4f} nats/token "
              f"(unigram baseline {summary['unigram_val_loss']:.4f}); checkpoint {summary['checkpoint']}")
    stopped_by = summary.get("stopped_by")
    if stopped_by:
        print(f"stopped by {stopped_by} at step {summary['step']} of {summary['max_steps']}; continue with --resume")
    return 128 + signal.Signals[stopped_by].value if stopped_by in ("SIGINT", "SIGTERM") else 0
