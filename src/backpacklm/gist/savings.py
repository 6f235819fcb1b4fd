"""What gist caching saves (Mu et al. 2023, sec. 6): stored bytes, FLOPs and wall time, against no caching and
instruction (full-prefix) caching, per prompt and averaged, at several batch sizes.

    no_cache            each request runs instruction + gists + input from scratch; nothing is stored
    instruction_cache   the instruction prefix's keys/values are stored; a request runs the input only
    gist_cache          only the k gists' keys/values are stored; a request runs the input only

FLOPs of the post-instruction forward (analytic, multiply-add = 2 FLOPs), for n new tokens after c cached positions:
    2 N n  +  2 L (2 d) (n c + n (n + 1) / 2)  [+ Backpack sense mixing: (2 d + 2 k d) (n c + n (n + 1) / 2)]  +  2 d V
with N the non-embedding parameters (run once per token), L layers, d width, k senses, V vocabulary (last-position
logits). For an encoder-decoder (T5; inner = heads x d_kv, P_enc / P_dec the encoder / decoder parameters without
embeddings, P_x the decoder's cross-attention key/value projections) the post-instruction forward is the encoder on
the n new source tokens (each reads all c + n positions) and the first decoder step, whose cross-attention projects
and reads all c + n encoder outputs:
    2 P_enc n + 2 L_enc (2 inner) n (c + n)  +  2 (P_dec - P_x) + 2 P_x (c + n) + 2 L_dec (2 inner) (1 + c + n)  +  2 d V
Wall times are medians over repeats (the three methods take turns in each round) of time to first token (the prefill, its LM head at the last position only,
and the first token's choice) and per generated token (later single-token steps), on this machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from .cache import (SamplingConfig, compress, decode, num_gists_of, prefill_compressed, prefill_uncached, prompt_ids,
                    tail_ids)
from .layout import GistExample, gist_token_id
from .t5 import is_encoder_decoder

METHODS = ("no_cache", "instruction_cache", "gist_cache")


def _dims(model) -> tuple[int, int, int, int]:
    """(layers, width, vocabulary, senses or 0)."""
    c = model.config
    layers = getattr(c, "n_layer", None) or c.num_hidden_layers
    width = getattr(c, "n_embd", None) or c.hidden_size
    return layers, width, c.vocab_size, getattr(c, "num_senses", 0) if c.model_type == "backpack" else 0


def non_embedding_parameters(model) -> int:
    """Parameters that run once per token: all but the token/position embedding tables and the LM head."""
    skip = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        skip.add(id(model.get_output_embeddings().weight))
    skip |= {id(p) for name, p in model.named_parameters()
             if name.endswith(("wpe.weight", "relative_attention_bias.weight"))}  # position tables
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def t5_forward_flops(model, n_new: int, n_context: int) -> float:
    """Analytic FLOPs of an encoder-decoder's post-instruction forward (module docstring)."""
    c = model.config
    inner, keys = c.num_heads * c.d_kv, n_context + n_new
    encoder = non_embedding_parameters(model.encoder)
    cross_kv = sum(p.numel() for name, p in model.decoder.named_parameters() if ".EncDecAttention.k." in name
                   or ".EncDecAttention.v." in name)
    decoder = non_embedding_parameters(model.decoder) - cross_kv
    encode = 2 * encoder * n_new + 2 * c.num_layers * 2 * inner * n_new * keys
    first_step = 2 * decoder + 2 * cross_kv * keys + 2 * c.num_decoder_layers * 2 * inner * (1 + keys)
    return encode + first_step + 2 * c.d_model * c.vocab_size


def forward_flops(model, n_new: int, n_context: int) -> float:
    """Analytic FLOPs to run n_new tokens after n_context cached positions (module docstring)."""
    if is_encoder_decoder(model):
        return t5_forward_flops(model, n_new, n_context)
    layers, d, vocab, senses = _dims(model)
    pairs = n_new * n_context + n_new * (n_new + 1) / 2  # (query, key) pairs attended
    attention = 2 * layers * 2 * d * pairs
    sense_mixing = (2 * d + 2 * senses * d) * pairs if senses else 0
    return 2 * non_embedding_parameters(model) * n_new + attention + sense_mixing + 2 * d * vocab


@dataclass
class MethodTiming:
    """One method at one batch size: wall times in milliseconds (per batch), stored bytes/positions per prompt."""

    method: str
    batch: int
    ttft_ms: float
    per_token_ms: float
    stored_positions: float
    stored_kv_bytes: float
    flops: float


@dataclass
class SavingsReport:
    """Per-prompt numbers (lists, in prompt order) and their means, plus timings per method and batch size."""

    model: str
    num_gists: int
    n_prompts: int
    instruction_tokens: list[int]
    compression_ratio: list[float]  # instruction tokens / k
    kv_bytes: dict[str, list[float]]  # method -> stored bytes per prompt
    flops: dict[str, list[float]]  # method -> post-instruction forward FLOPs per prompt
    timings: list[MethodTiming] = field(default_factory=list)

    @property
    def mean_compression_ratio(self) -> float:
        return statistics.fmean(self.compression_ratio)

    def to_dict(self) -> dict:
        means = {"instruction_tokens": statistics.fmean(self.instruction_tokens),
                 "compression_ratio": self.mean_compression_ratio,
                 "kv_bytes": {m: statistics.fmean(v) for m, v in self.kv_bytes.items()},
                 "flops": {m: statistics.fmean(v) for m, v in self.flops.items()}}
        return {**asdict(self), "mean": means}

    def table(self) -> str:
        """Markdown: one row per method and batch size, with ratios to no caching."""
        means = self.to_dict()["mean"]
        base = {t.batch: t for t in self.timings if t.method == "no_cache"}
        lines = [f"k = {self.num_gists}, {self.n_prompts} prompts, mean instruction {means['instruction_tokens']:.1f} "
                 f"tokens, compression ratio {self.mean_compression_ratio:.1f}x", "",
                 "| method | batch | stored KV / prompt | GFLOPs / prompt | time to first token (ms) | x no cache "
                 "| per token (ms) |", "|---|---|---|---|---|---|---|"]
        for t in self.timings:
            speedup = base[t.batch].ttft_ms / t.ttft_ms if t.batch in base else float("nan")
            lines.append(f"| {t.method} | {t.batch} | {_bytes(t.stored_kv_bytes)} | {t.flops / 1e9:.4f} | "
                         f"{t.ttft_ms:.2f} | {speedup:.2f}x | {t.per_token_ms:.2f} |")
        return "\n".join(lines)


def _bytes(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n:.0f} B"


def _interleaved_medians(fns: dict, repeats: int, setups: dict | None = None) -> dict[str, float]:
    """{name: median wall time (ms) of fn() or fn(setup()), the setup untimed} over `repeats` rounds; each round runs
    every fn once in turn, so a busy spell on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            args = (setups[name](),) if setups else ()
            start = time.perf_counter()
            fn(*args)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def measure_savings(model, tokenizer, examples: list[GistExample], batch_sizes=(1, 8), new_tokens: int = 16,
                    repeats: int = 3, num_gists: int | None = None, name: str = "") -> SavingsReport:
    """Bytes, FLOPs and wall times of the three methods on `examples` (inputs are used; outputs are not), for
    decoder-only and encoder-decoder (T5: stored bytes include the gists' encoder outputs) models."""
    model.eval()
    k = num_gists_of(model, num_gists)
    gist_id, eos = gist_token_id(tokenizer), tokenizer.eos_token_id
    instructions = [e.instruction for e in examples]
    gists = compress(model, tokenizer, instructions, k)
    full = compress(model, tokenizer, instructions, k, keep="all")
    tails = [tail_ids(model, tokenizer, e.input) for e in examples]
    prompts = [prompt_ids(model, tokenizer, e, k) for e in examples]
    n_instr = gists.instruction_tokens.tolist()
    flops = {
        "no_cache": [forward_flops(model, len(p), 0) for p in prompts],
        "instruction_cache": [forward_flops(model, len(t), i + k) for t, i in zip(tails, n_instr)],
        "gist_cache": [forward_flops(model, len(t), k) for t in tails],
    }
    kv = {"no_cache": [0.0] * len(examples), "instruction_cache": full.kv_bytes().tolist(),
          "gist_cache": gists.kv_bytes().tolist()}
    report = SavingsReport(name, k, len(examples), n_instr, [i / k for i in n_instr], kv, flops)
    never = SamplingConfig(max_new_tokens=new_tokens)
    for batch in batch_sizes:
        rows = list(range(min(batch, len(examples))))
        runs = {  # the LM head at the last position only, as the FLOP count assumes
            "no_cache": lambda: prefill_uncached(model, [prompts[i] for i in rows], gist_id, "gist", eos,
                                                 logits_to_keep=1),
            "instruction_cache": lambda: prefill_compressed(model, full.select(rows), [tails[i] for i in rows], eos,
                                                            logits_to_keep=1),
            "gist_cache": lambda: prefill_compressed(model, gists.select(rows), [tails[i] for i in rows], eos,
                                                     logits_to_keep=1),
        }
        for prefill in runs.values():
            prefill()  # warm-up
        ttft = _interleaved_medians({m: (lambda run=run: run().logits[:, -1].argmax(-1)) for m, run in runs.items()},
                                    repeats)
        decode_ms = _interleaved_medians({m: (lambda state: decode(model, state, -1, never)) for m in runs}, repeats,
                                         setups=runs)
        for method in METHODS:
            report.timings.append(MethodTiming(
                method, len(rows), ttft[method], decode_ms[method] / max(new_tokens - 1, 1),
                stored_positions={"no_cache": 0.0, "instruction_cache": float(full.stored_positions[rows].float().mean()),
                                  "gist_cache": float(k)}[method],
                stored_kv_bytes=statistics.fmean(kv[method][i] for i in rows),
                flops=statistics.fmean(flops[method][i] for i in rows),
            ))
    return report


def quality_vs_compression_png(evaluations, mean_instruction_tokens: float, path, split: str | None = None):
    """ROUGE-L against compression ratio (instruction tokens / k), one line per condition; a condition evaluated at
    a single k (e.g. the controls) is drawn as a horizontal reference line."""
    from ..plots import plt, save_figure

    split = split or next(iter(evaluations[0].splits))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for condition, style in (("gist", "o-"), ("pos_control", "s--"), ("neg_control", "^:")):
        points = sorted((mean_instruction_tokens / e.num_gists, e.splits[split].rouge_l, e.num_gists)
                        for e in evaluations if e.condition == condition and split in e.splits)
        if len(points) == 1 and condition != "gist":
            ax.axhline(points[0][1], ls=style[1:], color="gray", label=f"{condition} (k={points[0][2]})")
        elif points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=condition)
            if condition == "gist":
                for x, y, k in points:
                    ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (instruction tokens / gist tokens)")
    ax.set_ylabel(f"ROUGE-L on {split}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
