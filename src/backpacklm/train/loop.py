"""The training loop: AdamW, warmup + decay, clipping, accumulation, autocast, periodic validation, checkpoints,
exact resume, and data parallelism under torchrun.

The batches come from a source: `TokenWindows` (random windows of a prepared corpus, the default) or any object with
the same methods (e.g. `backpacklm.gist.train.InstructionBatches`: left-padded instruction batches with gist masks).

Data parallelism draws one global batch per micro-step from a generator that every rank seeds identically, and each
rank takes its own slice, so a 2-process run sees exactly the batches of a 1-process run with twice the batch size.
A step's loss is the mean over all its target tokens: each (micro-batch, rank) part's mean loss is weighted by its
share of the step's targets (`loss_tokens`), so accumulation and data parallelism give the gradient of one big batch
also when batches hold different numbers of targets (padded instruction data).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..atomic import check_output_dir, replacing, write_json_atomic
from ..checks import check_fields
from ..data.dataset import TokenData, sample_batch
from ..errors import BackpackError
from ..evaluation import mean_loss
from ..model.config import PRESETS, BackpackConfig
from ..model.loading import check_device, load_model, max_positions
from ..model.tied_loss import lean_loss
from ..model.transformer import build_model
from . import distributed
from .checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from .optim import learning_rate, make_optimizer

PUBLISHED_PRESETS = ("micro", "mini", "small")


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "tiny"
    arch: str = "backpack"
    model_overrides: dict = field(default_factory=dict)  # any BackpackConfig field, e.g. n_layer, num_senses
    init_from: str | None = None  # start from this model directory's weights (fine-tuning)
    max_steps: int | None = None  # None: 1000, or the resumed run's own value
    stop_after: int | None = None  # stop (and checkpoint) at this step without changing the schedule
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    batch_size: int = 12  # sequences per optimizer step per process, across accumulation steps
    block_size: int | None = None  # tokens per sequence; default: the model's positions
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 100
    decay: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int | None = None  # default: eval_interval
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 autocast on a GPU that supports it, else float32
    compile: bool = False
    threads: int | None = None  # CPU threads (torch.set_num_threads); 1 avoids OpenMP stalls on a busy small machine
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        check_fields(
            self, max_steps="positive_int", stop_after="positive_int", max_minutes="positive_float",
            batch_size="positive_int", block_size="positive_int", grad_accum="positive_int", lr="learning_rate",
            min_lr="non_negative_float", warmup_steps="non_negative_int", weight_decay="non_negative_float",
            grad_clip="non_negative_float", eval_interval="positive_int", eval_batches="positive_int",
            log_interval="positive_int", checkpoint_interval="positive_int", seed="seed",
            threads="positive_int",
        )
        if self.min_lr is not None and self.min_lr > self.lr:
            raise BackpackError(f"--min-lr {self.min_lr:g} is above --lr {self.lr:g}: the decay would raise the lr")
        if self.init_from and self.model_overrides:  # the model's own config.json decides: they would be ignored
            raise BackpackError(f"--init-from {self.init_from} keeps that model's sizes and settings; drop the "
                                f"model options ({', '.join(sorted(self.model_overrides))})")


def model_config(cfg: TrainConfig, meta: dict) -> BackpackConfig:
    """The preset with overrides; the vocabulary follows the data (published presets keep their 50264 rows)."""
    overrides = dict(cfg.model_overrides)
    data_vocab = int(meta["vocab_size"])
    if "vocab_size" not in overrides:
        preset_vocab = PRESETS.get(cfg.preset, {}).get("vocab_size", data_vocab)
        keep = cfg.preset in PUBLISHED_PRESETS and data_vocab <= preset_vocab
        overrides["vocab_size"] = preset_vocab if keep else data_vocab
    if overrides["vocab_size"] < data_vocab:
        raise BackpackError(f"vocab_size {overrides['vocab_size']} is smaller than the data's vocabulary ({data_vocab})")
    eot = meta.get("eot_id")
    return BackpackConfig.from_preset(cfg.preset, bos_token_id=eot, eos_token_id=eot, **overrides)


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on val of add-one-smoothed unigram frequencies from train: the floor to beat."""
    counts = np.bincount(np.asarray(train), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[np.asarray(val)].mean())


class TokenWindows:
    """Batch source over a prepared data folder: random windows for training, consecutive windows for validation.

    A source has `meta` (vocab_size, eot_id, n_train_tokens, ...), `tokenizer`, `prepare_model(model, fresh)`,
    `train_batch(n, block_size, generator)` -> forward kwargs with labels, `loss_tokens(batch)` -> how many target
    tokens its loss averages over, `val_loss(model, block_size, batch_size,
    max_batches, device)`, `unigram_baseline(vocab_size)` and `training_module(model)`, the module the loop calls
    with each batch (the model, or e.g. a wrapper that gives T5's encoder and cross-attention their own gist masks).
    """

    def __init__(self, data_dir: str):
        self.data = TokenData(data_dir)
        self.meta = self.data.meta
        if len(self.data.val) < 2:  # validation loss and the unigram baseline are scored on it
            raise BackpackError(f"{data_dir}: the validation split has {len(self.data.val)} token(s), training needs "
                                "at least 2; prepare the data with a validation fraction above 0")

    @property
    def tokenizer(self):
        return self.data.tokenizer

    def prepare_model(self, model, fresh: bool) -> None:
        """Nothing to adapt: the model's vocabulary already follows the data."""

    def training_module(self, model):
        """The module the loop calls with each batch: the model's loss without its logits where it allows
        (model/tied_loss.py), else the model itself."""
        return lean_loss(model)

    def train_batch(self, n: int, block_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = sample_batch(self.data.train, n, block_size, generator)
        return {"input_ids": batch, "labels": batch}

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Targets the loss averages over: every label but each row's first (the model shifts by one)."""
        return int((batch["labels"][:, 1:] != -100).sum())

    def val_loss(self, model, block_size: int, batch_size: int, max_batches: int, device) -> float:
        return mean_loss(model, self.data.val, block_size, batch_size, max_batches, device)

    def unigram_baseline(self, vocab_size: int) -> float:
        return unigram_loss(self.data.train, self.data.val, vocab_size)


class StopRequest:
    """First Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop at the end of the current step."""

    def __init__(self):
        self.requested = False
        self.signal: str | None = None  # the first signal's name, e.g. "SIGTERM"

    def __enter__(self):
        self.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.previous:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _autocast(device: str, dtype: str):
    """(context factory, GradScaler or None) for `dtype` on `device`; float16 needs CUDA, whose scaler it relies on."""
    if dtype == "float16" and not device.startswith("cuda"):
        raise BackpackError(f"--dtype float16 needs a CUDA GPU (for its loss scaling), not {device}; "
                            "use bfloat16 (CPU autocast) or float32")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float32":
        return contextlib.nullcontext, None
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    scaler = torch.amp.GradScaler("cuda") if dtype == "float16" else None
    return (lambda: torch.autocast(device.split(":")[0], dtype=amp_dtype)), scaler


def train(cfg: TrainConfig, source=None) -> dict:
    """Train (or resume) a run in `cfg.out` on `source` (default: `TokenWindows(cfg.data)`); returns the final
    summary (also written to summary.json)."""
    check_output_dir(cfg.out)  # before any work, like the device
    if cfg.device != "auto":
        check_device(cfg.device)
    env = distributed.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if env.device == "cpu":  # bitwise-reproducible runs (and so exact resume); some CPU kernels vary otherwise
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        if cfg.compile and env.device == "cpu":
            _check_cpp_compiler()
        return _train(cfg, env, source if source is not None else TokenWindows(cfg.data))
    finally:
        torch.use_deterministic_algorithms(deterministic)
        distributed.teardown(env)


def _check_cpp_compiler() -> None:
    """torch.compile's CPU backend (inductor) builds C++ at the first step with $CXX, else g++: refuse up front when
    that compiler is missing."""
    compiler = os.environ.get("CXX") or "g++"
    if not shutil.which(compiler):
        raise BackpackError(f"--compile on CPU needs the C++ compiler torch's inductor uses ({compiler}; set $CXX to "
                            "choose another) and it is not on PATH; install it or train without --compile")


def _check_data_tokenizer(data, model_tokenizer, model) -> None:
    """Prepared data (TokenWindows) must come with the model's tokenizer; other sources take theirs from the model."""
    if isinstance(data, TokenWindows):
        data.data.check_tokenizer(model_tokenizer, model)


def run_settings(cfg: TrainConfig) -> dict:
    """The settings that shape a run's updates; a resumed run must keep them to continue the same trajectory."""
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    return {"batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "lr": cfg.lr, "min_lr": min_lr,
            "warmup_steps": cfg.warmup_steps, "decay": cfg.decay, "weight_decay": cfg.weight_decay,
            "betas": list(cfg.betas), "grad_clip": cfg.grad_clip}


def _check_resume_settings(cfg: TrainConfig, state: dict) -> None:
    """--resume continues the saved schedule: a different total, block size or update setting is refused, not
    silently applied (a longer run is a new run started with --init-from)."""
    saved = {"max_steps": state["max_steps"], "block_size": state["block_size"], **state.get("settings", {})}
    given = {"max_steps": cfg.max_steps or saved["max_steps"], "block_size": cfg.block_size or saved["block_size"],
             **run_settings(cfg)}
    clash = [f"--{k.replace('_', '-')} {given[k]} (run: {v})" for k, v in saved.items() if given[k] != v]
    if clash:
        raise BackpackError(f"--resume continues the run's own settings; this command differs: {', '.join(clash)}; "
                            "repeat the run's settings, or start a new run with --init-from")


def _train(cfg: TrainConfig, env: distributed.Distributed, data) -> dict:
    run_dir = Path(cfg.out)
    checkpoint = latest_checkpoint(run_dir)
    state: dict = {}
    if cfg.resume:
        if checkpoint is None:
            raise BackpackError(f"--resume: {run_dir} holds no checkpoint to resume")
        model, model_tokenizer = load_model(checkpoint)
        _check_data_tokenizer(data, model_tokenizer, checkpoint)
        for param in model.parameters():  # fresh (aligned) storage, as in the uninterrupted run
            param.data = param.data.clone()
        state, extra, optimizer_state = load_training_state(checkpoint)
        if not {"rng.data", "rng.torch.0"} <= extra.keys() or "step" not in state:
            raise BackpackError(f"--resume: the training state in {checkpoint} is incomplete")
        for key in ("vocab_size", "n_train_tokens"):
            if state["data_meta"].get(key) != data.meta.get(key):
                raise BackpackError(f"--resume: {checkpoint} was trained on other data ({key} differs)")
        clash = {k: v for k, v in cfg.model_overrides.items() if getattr(model.config, k, v) != v}
        if clash:
            raise BackpackError(f"--resume: the checkpoint's config differs from the requested settings: {clash}")
        _check_resume_settings(cfg, state)
        if cfg.stop_after is not None and cfg.stop_after <= state["step"]:
            raise BackpackError(f"--stop-after {cfg.stop_after} is not beyond {checkpoint.name}, where the run stands")
    else:
        if checkpoint is not None:
            raise BackpackError(
                f"{run_dir} already holds a run (at {checkpoint.name}); pass --resume to continue it or choose another --out"
            )
        torch.manual_seed(cfg.seed)
        if cfg.init_from:
            model, model_tokenizer = load_model(cfg.init_from)
            _check_data_tokenizer(data, model_tokenizer, cfg.init_from)
        else:
            model = build_model(model_config(cfg, data.meta), cfg.arch)
    data.prepare_model(model, fresh=not cfg.resume)
    config = model.config
    if len(data.tokenizer) > config.vocab_size:
        raise BackpackError(f"the data's tokenizer has {len(data.tokenizer)} tokens; the model only {config.vocab_size}")

    max_steps = cfg.max_steps or state.get("max_steps") or 1000
    positions = max_positions(model)  # None for relative positions (T5)
    block_size = cfg.block_size or state.get("block_size") or positions
    if positions and block_size and block_size > positions:
        raise BackpackError(f"block size {block_size} exceeds the model's {positions} positions")
    if cfg.batch_size % (env.world_size * cfg.grad_accum):
        raise BackpackError(
            f"batch size {cfg.batch_size} must be divisible by processes ({env.world_size}) x accumulation ({cfg.grad_accum})"
        )
    micro_batch = cfg.batch_size // cfg.grad_accum  # global sequences per micro-step, split across processes
    per_rank = micro_batch // env.world_size
    min_lr = run_settings(cfg)["min_lr"]
    if env.is_main and cfg.warmup_steps >= max_steps:
        last_lr = learning_rate(max_steps - 1, cfg.lr, min_lr, cfg.warmup_steps, max_steps, cfg.decay)
        print(f"note: warmup ({cfg.warmup_steps} steps) is not shorter than the run ({max_steps} steps): the lr only "
              f"rises, to {last_lr:g} at the last step, and never decays", flush=True)
    checkpoint_interval = cfg.checkpoint_interval or cfg.eval_interval

    device = env.device
    model.to(device).train()
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    generator = torch.Generator().manual_seed(cfg.seed)  # identical on every rank: see module docstring
    torch.manual_seed(cfg.seed + env.rank)  # dropout streams differ per rank
    if cfg.resume:
        optimizer.load_state_dict(optimizer_state)
        generator.set_state(extra["rng.data"])
        saved_ranks = sum(key.startswith("rng.torch.") for key in extra)
        if saved_ranks == env.world_size:
            distributed.restore_rng_states(env, extra)
        elif env.is_main:  # the dropout streams cannot continue; the run still resumes (not bit for bit)
            print(f"note: {checkpoint.name} was trained with {saved_ranks} process(es), this run has "
                  f"{env.world_size}: dropout streams restart from the seed", flush=True)
    step = state.get("step", 0)
    best = state.get("best_val_loss")
    best = math.inf if best is None else best  # None (JSON null): no validation yet

    train_model = data.training_module(model)
    if cfg.compile:
        train_model = torch.compile(train_model)
    if env.enabled:
        train_model = DistributedDataParallel(train_model, device_ids=[env.local_rank] if device.startswith("cuda") else None)
    autocast, scaler = _autocast(device, cfg.dtype)

    metrics_path = run_dir / "metrics.jsonl"
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
        write_json_atomic(run_dir / "train_config.json", asdict(cfg))
    baseline = data.unigram_baseline(config.vocab_size)

    def checkpoint_now(val_loss: float | None):
        rng = {"rng.data": generator.get_state()}
        rng.update(distributed.gather_rng_states(env))
        if env.is_main:
            save_checkpoint(
                run_dir, step, model, data.tokenizer, optimizer,
                {"max_steps": max_steps, "block_size": block_size, "settings": run_settings(cfg), "arch": config.model_type,
                 "data_meta": {k: data.meta.get(k) for k in ("vocab_size", "n_train_tokens", "n_val_tokens")},
                 "best_val_loss": _finite_or_none(best), "val_loss": val_loss},
                rng,
            )
        distributed.barrier(env)

    start_time, window_start, window_tokens, out_of_time = time.time(), time.time(), 0, False
    last_val = state.get("val_loss")
    bar = tqdm(total=max_steps, initial=step, unit="step", disable=not (cfg.progress and env.is_main),
               dynamic_ncols=True, mininterval=1.0)
    with StopRequest() as stop:
        while step < max_steps:
            lr = learning_rate(step, cfg.lr, min_lr, cfg.warmup_steps, max_steps, cfg.decay)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            batches = [data.train_batch(micro_batch, block_size, generator) for _ in range(cfg.grad_accum)]
            step_targets = max(sum(data.loss_tokens(b) for b in batches), 1)  # the same on every rank
            for micro, batch in enumerate(batches):
                window_tokens += batch["input_ids"].numel()
                batch = {k: v[env.rank * per_rank:(env.rank + 1) * per_rank].to(device) for k, v in batch.items()}
                share = data.loss_tokens(batch) * env.world_size / step_targets  # DDP averages over the ranks
                sync = contextlib.nullcontext() if (not env.enabled or micro == cfg.grad_accum - 1) else train_model.no_sync()
                with sync, autocast():
                    loss = train_model(**batch, use_cache=False).loss * share
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.item()
            step_loss = distributed.mean_across(env, step_loss)
            if not math.isfinite(step_loss):
                kept = latest_checkpoint(run_dir)
                where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written yet"
                raise BackpackError(f"loss became {step_loss} at step {step + 1}; stopped, {where}")
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf).item()  # pre-clip
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            record = None
            if step % cfg.log_interval == 0 or step == max_steps:
                rate = window_tokens / max(time.time() - window_start, 1e-9)
                window_start, window_tokens = time.time(), 0
                record = {"step": step, "lr": lr, "train_loss": step_loss, "grad_norm": grad_norm, "tokens_per_s": rate,
                          "elapsed_s": time.time() - start_time}
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{rate:,.0f}", val=f"{last_val:.3f}" if last_val else "-")
            out_of_time = cfg.max_minutes is not None and (time.time() - start_time) > 60 * cfg.max_minutes
            stopping = (step == max_steps or step == cfg.stop_after
                        or distributed.mean_across(env, float(stop.requested or out_of_time)) > 0)
            paused = time.time()
            if step % cfg.eval_interval == 0 or stopping:
                last_val = data.val_loss(model, block_size, per_rank or 1, cfg.eval_batches, device)
                best = min(best, last_val)
                record = {**(record or {"step": step, "lr": lr, "train_loss": step_loss, "grad_norm": grad_norm,
                                        "elapsed_s": time.time() - start_time}), "val_loss": last_val}
                if env.is_main and cfg.progress:
                    bar.write(f"step {step}: train loss {step_loss:.4f}, val loss {last_val:.4f} "
                              f"(unigram baseline {baseline:.4f})")
            if record and env.is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")
                if "val_loss" in record:  # the curve follows the run, and outlives a run that fails later
                    _plot_losses(metrics_path, run_dir / "loss_curve.png", baseline)
            if step % checkpoint_interval == 0 or stopping:
                checkpoint_now(last_val)
            window_start += time.time() - paused  # tokens/s measures training, not validation or checkpoints
            bar.update(1)
            if stopping:
                break
    bar.close()

    early = step < max_steps and step != cfg.stop_after
    stopped_by = (stop.signal or ("time limit" if out_of_time else "a signal to another process")) if early else None
    summary = {"step": step, "max_steps": max_steps, "stopped_by": stopped_by, "val_loss": last_val,
               "best_val_loss": _finite_or_none(best),
               "unigram_val_loss": baseline, "train_seconds": time.time() - start_time,
               "checkpoint": str(latest_checkpoint(run_dir)) if env.is_main else None}
    if env.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _plot_losses(metrics_path: Path, png_path: Path, baseline: float) -> None:
    from ..plots import loss_curve  # matplotlib only once there is something to plot

    loss_curve(metrics_path, png_path, baseline)


def _finite_or_none(value):
    """JSON has no NaN or infinity: such a value (the gradient norm of an fp16 step the scaler skips; the best
    validation loss before any validation) is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _record_step(line: str) -> int | None:
    """The step of one metrics record; None for a line that is not one (e.g. half-written when a run was killed)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records past the checkpoint, and torn or unreadable lines, so the log matches the weights."""
    if not path.exists():
        return
    text = path.read_bytes().decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines() if (s := _record_step(line)) is not None and s <= step]
    with replacing(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
