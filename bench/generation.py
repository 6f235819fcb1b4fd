"""Per-token latency of greedy decoding: our KV/sense cache vs recomputing the whole prefix at every step.

Claim under test: with the cache, a new token at context 512 costs >= 10x less than recomputing the prefix, and the
cached logits equal those of a full forward (max abs diff <= 1e-5).

Model: the `micro` preset (d=384, L=6, H=6, k=16, V=50264, 512 positions), random weights (torch.manual_seed(0)),
eval mode, no_grad. Prompts: windows of tinyshakespeare in GPT-2 BPE ids when ../shared/data has them, else random ids.

At each context length c: prefill c - n_new prompt tokens with the cache, then take n_new greedy steps, so the last
step sees exactly c tokens. Every step is timed four ways, in rotating order (the machine is noisy):
    cached                 ours(new_token, cache=cache)                    1 position through the model
    recompute, ours        ours(whole_prefix, use_cache=False)                       all logits, like the official code
    recompute, ours last   ours(whole_prefix, use_cache=False, logits_to_keep=1)     the cheapest no-cache forward
    recompute, naive       bench/naive_backpack.py on the whole prefix               official-style: senses at every
                                                                                      position, alpha materialized
Reported: median ms per token of each, speedups of the cache, and max |cached logits - full-forward logits| over all
steps (with the largest |logit| for scale). The greedy tokens come from the cached logits; the check compares the
same positions.

Run:  .venv/bin/python bench/generation.py [--contexts 64 256 512 --new-tokens 5 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from backpacklm.model import BackpackConfig, BackpackForCausalLM
from common import bpe_corpus, print_table, save_result
from naive_backpack import NaiveBackpack

METHODS = ("cached", "recompute_ours_full_logits", "recompute_ours_last_logit", "recompute_naive")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@torch.no_grad()
def bench_context(ours, naive, prompt, n_new):
    """Greedy-decode n_new tokens after `prompt` [1, p]; time each step with every method."""
    (out, prefill_s) = timed(lambda: ours(prompt, use_cache=True))
    cache, next_id = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    seq = prompt
    times = {m: [] for m in METHODS}
    max_diff = max_naive_diff = max_logit = 0.0
    for step in range(n_new):
        seq = torch.cat([seq, next_id], dim=1)
        runs = {
            "cached": lambda: ours(next_id, cache=cache, use_cache=True).logits[:, -1],
            "recompute_ours_full_logits": lambda: ours(seq, use_cache=False).logits[:, -1],
            "recompute_ours_last_logit": lambda: ours(seq, use_cache=False, logits_to_keep=1).logits[:, -1],
            "recompute_naive": lambda: naive(seq)[0][:, -1],
        }
        order = METHODS[step % 4:] + METHODS[: step % 4]
        logits = {}
        for m in order:
            logits[m], seconds = timed(runs[m])
            times[m].append(seconds)
        max_diff = max(max_diff, (logits["cached"] - logits["recompute_ours_full_logits"]).abs().max().item(),
                       (logits["cached"] - logits["recompute_ours_last_logit"]).abs().max().item())
        max_naive_diff = max(max_naive_diff, (logits["cached"] - logits["recompute_naive"]).abs().max().item())
        max_logit = max(max_logit, logits["recompute_ours_full_logits"].abs().max().item())
        next_id = logits["cached"].argmax(-1, keepdim=True)
    assert seq.shape[1] == prompt.shape[1] + n_new
    return dict(
        context=seq.shape[1], prompt_tokens=prompt.shape[1], new_tokens=n_new, prefill_s=prefill_s,
        median_ms={m: 1000 * statistics.median(t) for m, t in times.items()},
        all_ms={m: [1000 * x for x in t] for m, t in times.items()},
        max_abs_logit_diff_cached_vs_full=max_diff,
        max_abs_logit_diff_cached_vs_naive=max_naive_diff,
        max_abs_logit=max_logit,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="micro")
    p.add_argument("--contexts", type=int, nargs="+", default=[64, 256, 512])
    p.add_argument("--new-tokens", type=int, default=5, help="greedy steps timed at each context length")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--data", default=None, help="directory with tinyshakespeare/ and gpt2_bpe/ (default ../shared/data)")
    p.add_argument("--out", default="generation")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = BackpackConfig.from_preset(args.preset)
    ours = BackpackForCausalLM(config).eval()
    naive = NaiveBackpack.from_ours(ours).eval()
    data, source = bpe_corpus(args.data, config.vocab_size)
    print(f"preset {args.preset}, prompts: {source}, threads {torch.get_num_threads()}")

    results = []
    g = torch.Generator().manual_seed(0)
    for context in args.contexts:
        n_prompt = context - args.new_tokens
        start = int(torch.randint(len(data) - n_prompt, (1,), generator=g))
        prompt = data[start : start + n_prompt].unsqueeze(0)
        r = bench_context(ours, naive, prompt, args.new_tokens)
        med = r["median_ms"]
        r["speedup_vs_recompute_ours_full_logits"] = med["recompute_ours_full_logits"] / med["cached"]
        r["speedup_vs_recompute_ours_last_logit"] = med["recompute_ours_last_logit"] / med["cached"]
        r["speedup_vs_recompute_naive"] = med["recompute_naive"] / med["cached"]
        results.append(r)
        print(f"context {context}: cached {med['cached']:.1f} ms/token", flush=True)

    print()
    print_table(
        ["context", "cached ms", "recompute ours ms", "recompute ours last-logit ms", "recompute naive ms",
         "speedup (ours full)", "speedup (ours last)", "speedup (naive)", "max |dlogit|"],
        [[str(r["context"]), f"{r['median_ms']['cached']:.1f}", f"{r['median_ms']['recompute_ours_full_logits']:.1f}",
          f"{r['median_ms']['recompute_ours_last_logit']:.1f}", f"{r['median_ms']['recompute_naive']:.1f}",
          f"{r['speedup_vs_recompute_ours_full_logits']:.1f}x", f"{r['speedup_vs_recompute_ours_last_logit']:.1f}x",
          f"{r['speedup_vs_recompute_naive']:.1f}x", f"{r['max_abs_logit_diff_cached_vs_full']:.1e}"] for r in results],
    )
    worst = max(r["max_abs_logit_diff_cached_vs_full"] for r in results)
    print(f"\nmax |cached - full forward| logits over all steps: {worst:.2e} "
          f"(largest |logit| {max(r['max_abs_logit'] for r in results):.2e})")
    save_result(args.out, dict(
        claim="cached greedy decoding >= 10x faster per token than recomputing the prefix at context 512; "
              "cached logits equal the full forward within 1e-5",
        preset=args.preset, config={k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "num_senses",
                                                                   "vocab_size", "n_positions")},
        prompt_source=source, threads=torch.get_num_threads(), weights="random init, torch.manual_seed(0)",
        results=results, max_abs_logit_diff_cached_vs_full=worst,
    ))


if __name__ == "__main__":
    main()
