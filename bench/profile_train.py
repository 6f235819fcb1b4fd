"""Where a training step goes: ours vs naive, part by part (diagnostic for train_throughput.py's config (a)).

Each part is timed forward + backward on the same inputs, the parts taking turns `--rounds` times (median reported):
    trunk              the GPT-2 contextualization network: ours = HF GPT2Model, naive = the nanoGPT-style trunk
    senses             ours: sense network once per distinct id + gather; naive: sense network at every position
    weights + mixing   alpha from the trunk output and sum_l alpha_l @ C_l (ours: fused SDPA; naive: materialized)
    logits + loss      o E^T and the shifted cross-entropy
    whole fwd+bwd      the full model
    optimizer step     AdamW over all parameters
plus the fixed cost of a forward on a single token (Python / Hugging Face overhead per call), and the ceiling on the
ours/naive speedup of a training step when everything but the trunk and the optimizer step were free in ours:
    (naive whole fwd+bwd + naive optimizer step) / (ours trunk + ours optimizer step)
(the trunk does the same work in both, at the speed of a hand-written nanoGPT trunk).
Finally torch.profiler's top operators (self CPU time) over a few full training steps of each model.

Run:  .venv/bin/python bench/profile_train.py [--block 64 --batch 12 --threads 1 --rounds 15 --top 12]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from backpacklm.model import BackpackConfig, BackpackForCausalLM
from common import char_corpus, print_table, random_windows, save_result
from naive_backpack import NaiveBackpack
from train_throughput import CONFIG_A


def parts(ours, naive, x):
    """name -> (ours_fn, naive_fn); each fn runs forward + backward of that part."""
    config = ours.config
    d, k = config.n_embd, config.num_senses
    B, T = x.shape
    h = torch.randn(B, T, d, requires_grad=True)
    senses = torch.randn(B, T, k, d, requires_grad=True)
    o = torch.randn(B, T, d, requires_grad=True)

    def ours_mix():
        q, key = ours.sense_weights(h)
        out = F.scaled_dot_product_attention(q, key, senses.transpose(1, 2), is_causal=True,
                                             scale=1 / math.sqrt(d // k)).sum(1)
        out.sum().backward()

    def naive_mix():
        alpha = naive.sense_weights(h)
        (alpha @ senses.transpose(1, 2)).sum(1).sum().backward()

    def ours_head():
        logits = o @ ours.transformer.wte.weight.T
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten()).backward()

    def naive_head():
        logits = o @ naive.transformer.wte.weight.T
        F.cross_entropy(logits[:, :-1].contiguous().view(-1, logits.size(-1)), x[:, 1:].contiguous().view(-1)).backward()

    return {
        "trunk": (lambda: ours.transformer(input_ids=x).last_hidden_state.sum().backward(),
                  lambda: naive.transformer(x).sum().backward()),
        "senses": (lambda: ours.token_senses(x).sum().backward(),
                   lambda: naive.sense_network(naive.transformer.wte(x)).sum().backward()),
        "weights + mixing": (ours_mix, naive_mix),
        "logits + loss": (ours_head, naive_head),
        "whole fwd+bwd": (lambda: ours(x, labels=x, use_cache=False).loss.backward(),
                          lambda: naive(x, labels=x)[1].backward()),
    }


def median_times(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()  # warm up
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def top_ops(step, batches, top):
    from torch.profiler import ProfilerActivity, profile

    for x in batches[:2]:
        step(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x in batches[2:]:
            step(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [dict(op=e.key, self_ms_per_step=e.self_cpu_time_total / 1000 / (len(batches) - 2),
                 share=e.self_cpu_time_total / total, calls_per_step=e.count / (len(batches) - 2)) for e in events[:top]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="profile_train")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data, vocab, source = char_corpus(args.data)
    kwargs = dict(CONFIG_A, vocab_size=vocab, n_positions=max(args.block, CONFIG_A["n_positions"]))
    torch.manual_seed(0)
    ours = BackpackForCausalLM(BackpackConfig(**kwargs)).train()
    naive = NaiveBackpack.from_ours(ours)
    g = torch.Generator().manual_seed(0)
    x = random_windows(data, args.batch, args.block, g)

    fns = {}
    for name, (fo, fn) in parts(ours, naive, x).items():
        fns[("ours", name)], fns[("naive", name)] = fo, fn
    opt_o = torch.optim.AdamW(ours.parameters(), lr=0.0)  # lr 0: time the update without training the weights
    opt_n = torch.optim.AdamW(naive.parameters(), lr=0.0)
    fns[("ours", "optimizer step")] = opt_o.step
    fns[("naive", "optimizer step")] = opt_n.step
    one = x[:1, :1]
    with torch.no_grad():
        fns[("ours", "fixed cost: forward of 1 token")] = lambda: ours(one, use_cache=False)
        fns[("naive", "fixed cost: forward of 1 token")] = lambda: naive(one)
        torch.set_grad_enabled(False)
        fixed = median_times({k: v for k, v in fns.items() if k[1].startswith("fixed")}, 3 * args.rounds)
        torch.set_grad_enabled(True)
    timed = median_times({k: v for k, v in fns.items() if not k[1].startswith("fixed")}, args.rounds)
    timed.update(fixed)
    ours.zero_grad(set_to_none=True), naive.zero_grad(set_to_none=True)

    names = ["trunk", "senses", "weights + mixing", "logits + loss", "whole fwd+bwd", "optimizer step",
             "fixed cost: forward of 1 token"]
    get = lambda who, n: timed.get((who, n))
    rows = [[n, f"{get('ours', n):.2f}", f"{get('naive', n):.2f}", f"{get('naive', n) / get('ours', n):.2f}x"]
            for n in names]
    print(f"config (a) parts at batch {args.batch} x block {args.block}, {torch.get_num_threads()} thread(s); ms, median")
    print_table(["part (fwd+bwd)", "ours ms", "naive ms", "naive/ours"], rows)
    whole_o, whole_n = get("ours", "whole fwd+bwd"), get("naive", "whole fwd+bwd")
    step_n, step_o = whole_n + get("naive", "optimizer step"), whole_o + get("ours", "optimizer step")
    ceiling = step_n / (get("ours", "trunk") + get("ours", "optimizer step"))
    print(f"\ntraining step (fwd+bwd+AdamW) ours/naive {step_n / step_o:.2f}x; ceiling if all but the trunk and the "
          f"optimizer were free in ours: {ceiling:.2f}x (the trunk is {100 * get('naive', 'trunk') / step_n:.0f}% "
          f"of the naive step)")

    opt_o, opt_n = (torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.99)) for m in (ours, naive))

    def step_fn(model, opt, loss_fn):
        def step(xb):
            loss_fn(model, xb).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    batches = [random_windows(data, args.batch, args.block, g) for _ in range(7)]
    ops = {
        "ours": top_ops(step_fn(ours, opt_o, lambda m, xb: m(xb, labels=xb, use_cache=False).loss), batches, args.top),
        "naive": top_ops(step_fn(naive, opt_n, lambda m, xb: m(xb, labels=xb)[1]), batches, args.top),
    }
    for who, rows in ops.items():
        print(f"\ntop operators, {who} (self CPU time per training step)")
        print_table(["op", "ms/step", "share", "calls/step"],
                    [[r["op"], f"{r['self_ms_per_step']:.2f}", f"{100 * r['share']:.1f}%", f"{r['calls_per_step']:.0f}"]
                     for r in rows])
    save_result(args.out, dict(
        claim="diagnostic: where ours and naive spend a training step on config (a)",
        data_source=source, threads=torch.get_num_threads(), batch=args.batch, block=args.block,
        parts_ms={f"{who} | {n}": v for (who, n), v in timed.items()},
        speedup_fwd_bwd=whole_n / whole_o, speedup_step=step_n / step_o, speedup_ceiling_trunk_only=ceiling,
        top_ops=ops,
    ))


if __name__ == "__main__":
    main()
