"""Training throughput (tokens/s) and MFU of our Backpack vs the naive baseline (bench/naive_backpack.py).

Claim under test: ours >= 2x the naive tokens/s on config (a), with the same loss curve.

Configs
    (a) char-level, vocab 65, L=4, H=4, d=128, k=4, block 64, batch 12, dropout 0
    (b) the `tiny` preset (L=4, H=4, d=128, k=4) with vocab 65, block = its n_positions = 256, batch 12

Protocol: same initial weights (naive.load_from(ours)), same batches (random windows of the text), one
torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.99)) each. After `--warmup` steps each, the models take turns in blocks of
`--block` steps on the same batches (the order alternates every block), so machine noise hits both alike.
tokens/s counts every input token (batch * block per step); the time is forward + backward + optimizer step.

Loss curves: char-level training at lr 1e-3 is chaotic. Rounding-level differences stay ~1e-7 for tens of steps,
then grow ~10x per step to ~1e-2. Two runs of OUR model whose weights differ by 1e-7 (relative) drift apart the same
way. So besides the max |loss_ours - loss_naive| over all steps (and over the first 10), the results give (i) the
same for ours vs ours-perturbed on the same batches (the chaos floor; --no-control skips it), (ii) a short float64
run of ours vs naive (--fp64-steps), where rounding is ~1e-16 and the curves agree to that level until the chaos
takes over.

FLOPs per training token (MFU = achieved model FLOP/s / this CPU's fp32 matmul peak, measured in the same run as the
best of 2 n^3 / t over torch.matmul of n = 1024, 1536, 2048). Forward multiply-accumulates per token, with
T = block, d = n_embd, L = n_layer, k = senses, V = vocab, FFN_1 inner i1 = 4d, FFN_2 inner i2 = 4d:
    trunk            12 L d^2                    (qkv 3d^2 + proj d^2 + MLP 8d^2 per layer)
    trunk attention  2 L T d                     (QK^T and AV, full T: no causal halving, as nanoGPT's 6N + 12LHQT)
    sense network    (d i1 + i1 d + d i2 + i2 k d) * u / (B T)   (u = distinct token ids in the batch: run once per id)
    sense weights    2 d^2                       (the Linear d -> 2d giving queries and keys)
    alpha scores     T d                         (k heads of size d/k, full T)
    sense mixing     k T d                       (alpha @ senses, values of size d per sense)
    output           d V                         (logits = o E^T)
  training FLOPs per token = 2 (FLOPs per MAC) * 3 (forward + backward) * sum of the above.
The same model FLOPs are used for both implementations (MFU counts useful work); "naive executed" also counts the
sense network the naive code runs at every position (u = B T), i.e. hardware FLOPs utilization.

Writes bench/results/<out>.json and <out>.png (loss curves and their differences).

Run:  .venv/bin/python bench/train_throughput.py [--steps-a 200 --steps-b 40 --threads 1 --data DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from backpacklm.model import PRESETS, BackpackConfig, BackpackForCausalLM
from common import RESULTS_DIR, char_corpus, matmul_peak_flops, print_table, random_windows, save_result
from naive_backpack import NaiveBackpack, max_logit_diff

CONFIG_A = dict(n_layer=4, n_head=4, n_embd=128, num_senses=4, vocab_size=65, n_positions=64,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def flops_per_token(config, block: int, distinct_per_batch: float, tokens_per_batch: int) -> dict:
    """Forward MACs per token by part (see the module docstring) and the training FLOPs per token."""
    d, L, k, V, T = config.n_embd, config.n_layer, config.num_senses, config.vocab_size, block
    i1, i2 = config.sense_inner_sizes
    sense_per_id = d * i1 + i1 * d + d * i2 + i2 * k * d
    macs = dict(
        trunk=12 * L * d * d,
        trunk_attention=2 * L * T * d,
        sense_network=sense_per_id * distinct_per_batch / tokens_per_batch,
        sense_weights=2 * d * d,
        alpha_scores=T * d,
        sense_mixing=k * T * d,
        output=d * V,
    )
    total = sum(macs.values())
    executed_naive = total - macs["sense_network"] + sense_per_id  # the naive code runs it at every position
    return dict(macs=macs, train_flops=6 * total, train_flops_naive_executed=6 * executed_naive)


class Runner:
    """One model + its optimizer; `step(x)` trains on a batch and returns (loss, seconds)."""

    def __init__(self, name, model, loss_fn):
        self.name, self.model, self.loss_fn = name, model, loss_fn
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
        self.losses, self.times = [], []

    def step(self, x):
        t0 = time.perf_counter()
        loss = self.loss_fn(self.model, x)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        value = loss.item()
        return value, time.perf_counter() - t0


def ours_loss(model, x):  # as the trainer calls it: the loss without materializing the logits
    return model(x, labels=x, use_cache=False, return_logits=False).loss


def ours_loss_fp64(model, x):  # our loss casts logits to float32; keep float64 for the precision check
    logits = model(x, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())


def naive_loss(model, x):
    return model(x, labels=x)[1]


def build(config_kwargs, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    config = BackpackConfig(**config_kwargs)
    ours = BackpackForCausalLM(config).to(dtype).train()
    return config, ours, NaiveBackpack.from_ours(ours)


def perturbed_copy(ours, rel=1e-7, seed=1):
    """Our model with every weight multiplied by (1 + rel * N(0,1)): the chaos-floor control."""
    other = BackpackForCausalLM(ours.config).to(ours.dtype).train()
    other.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def run_interleaved(runners, batches, warmup, block):
    """Warm up each runner, then alternate blocks of `block` steps (rotating the order) over the same batches."""
    for r in runners:
        for x in batches[:warmup]:
            r.losses.append(r.step(x)[0])
    timed = batches[warmup:]
    block_times = {r.name: [] for r in runners}
    for b, start in enumerate(range(0, len(timed), block)):
        order = runners[b % len(runners):] + runners[: b % len(runners)]
        for r in order:
            elapsed = 0.0
            for x in timed[start : start + block]:
                loss, seconds = r.step(x)
                r.losses.append(loss)
                r.times.append(seconds)
                elapsed += seconds
            block_times[r.name].append(elapsed)
    return block_times


def curve_stats(a, b, warmup_steps=10):
    diffs = [abs(x - y) for x, y in zip(a, b)]
    above = [i for i, dd in enumerate(diffs) if dd > 1e-4]
    return dict(
        max_abs_diff=max(diffs),
        max_abs_diff_first_10_steps=max(diffs[:warmup_steps]),
        first_step_above_1e_4=above[0] if above else None,
        mean_last_20_a=statistics.fmean(a[-20:]),
        mean_last_20_b=statistics.fmean(b[-20:]),
    )


def bench_config(label, config_kwargs, block_size, batch_size, steps, warmup, block, data, peak, control):
    config, ours, naive = build(config_kwargs)
    g = torch.Generator().manual_seed(1234)
    batches = [random_windows(data, batch_size, block_size, g) for _ in range(warmup + steps)]
    check_x = batches[0][:4]
    logit_diff = max_logit_diff(ours, naive, check_x)
    assert logit_diff < 1e-5, f"ours and naive disagree before training: {logit_diff}"

    runners = [Runner("ours", ours, ours_loss), Runner("naive", naive, naive_loss)]
    print(f"[{label}] {steps} timed steps after {warmup} warm-up steps, blocks of {block} ...", flush=True)
    block_times = run_interleaved(runners, batches, warmup, block)

    tokens_per_step = batch_size * block_size
    distinct = statistics.fmean(int(torch.unique(x).numel()) for x in batches)
    flops = flops_per_token(config, block_size, distinct, tokens_per_step)
    result = dict(
        config={k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "num_senses", "vocab_size",
                                                "n_positions", "activation_function")},
        block_size=block_size, batch_size=batch_size, tokens_per_step=tokens_per_step,
        steps_timed=steps, warmup_steps=warmup, interleave_block=block,
        distinct_ids_per_batch=distinct, flops_per_token=flops,
        max_abs_logit_diff_at_init=logit_diff, models={},
    )
    for r in runners:
        tok_s = tokens_per_step * len(r.times) / sum(r.times)
        result["models"][r.name] = dict(
            tokens_per_s=tok_s,
            median_step_ms=1000 * statistics.median(r.times),
            mfu=tok_s * flops["train_flops"] / peak,
            losses=r.losses,
        )
    result["models"]["naive"]["hfu_executed_flops"] = (
        result["models"]["naive"]["tokens_per_s"] * flops["train_flops_naive_executed"] / peak
    )
    t_ours, t_naive = sum(runners[0].times), sum(runners[1].times)
    result["speedup_ours_vs_naive"] = t_naive / t_ours
    result["speedup_ours_vs_naive_median_of_blocks"] = statistics.median(
        n / o for n, o in zip(block_times["naive"], block_times["ours"]))
    result["loss_curve_ours_vs_naive"] = curve_stats(runners[0].losses, runners[1].losses)

    if control:  # chaos floor: ours vs ours with 1e-7-relative weight noise, same batches, fp32
        a = Runner("ours", build(config_kwargs)[1], ours_loss)
        b = Runner("ours perturbed", perturbed_copy(a.model), ours_loss)
        for x in batches:
            a.losses.append(a.step(x)[0])
            b.losses.append(b.step(x)[0])
        result["loss_curve_control_ours_vs_ours_perturbed_1e-7"] = curve_stats(a.losses, b.losses)
    return result


def fp64_check(config_kwargs, block_size, batch_size, steps, data):
    """ours vs naive in float64 (and ours vs ours perturbed by 1e-12): how long the curves agree to ~1e-10."""
    _, ours, naive = build(config_kwargs, dtype=torch.float64)
    runners = [Runner("ours", ours, ours_loss_fp64), Runner("naive", naive, naive_loss),
               Runner("ours perturbed 1e-12", perturbed_copy(ours, rel=1e-12), ours_loss_fp64)]
    g = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        x = random_windows(data, batch_size, block_size, g)
        for r in runners:
            r.losses.append(r.step(x)[0])
    diff = lambda a, b: [abs(x - y) for x, y in zip(a.losses, b.losses)]
    return dict(steps=steps, perturbation=1e-12, abs_diff_ours_vs_naive=diff(runners[0], runners[1]),
                abs_diff_ours_vs_ours_perturbed=diff(runners[0], runners[2]))


def plot_curves(configs: dict, fp64: dict | None, path) -> None:
    """PNG: per config the fp32 loss curves of ours and naive (left), and |loss ours - loss naive| per step on a log
    scale for each fp32 config and the float64 run (right): rounding-level agreement, then the fp32 chaos."""
    from backpacklm.plots import plt, save_figure

    fig, (curves, diffs) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, r in configs.items():
        ours, naive = r["models"]["ours"]["losses"], r["models"]["naive"]["losses"]
        line = curves.plot(ours, label=f"{label}: ours")[0]
        curves.plot(naive, "--", color=line.get_color(), label=f"{label}: naive")
        diffs.semilogy([max(abs(a - b), 1e-17) for a, b in zip(ours, naive)], color=line.get_color(),
                       label=f"{label}, fp32")
    if fp64:
        diffs.semilogy([max(d, 1e-17) for d in fp64["abs_diff_ours_vs_naive"]], color="black", label="a, float64")
    curves.set(xlabel="step", ylabel="training loss (nats/char)", title="same batches, same initial weights")
    diffs.set(xlabel="step", ylabel="|loss ours - loss naive|", title="difference (floor 1e-17 = equal)")
    curves.legend()
    diffs.legend()
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps-a", type=int, default=200, help="timed steps on config (a)")
    p.add_argument("--steps-b", type=int, default=40, help="timed steps on config (b), the tiny preset")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--block", type=int, default=10, help="steps per turn when interleaving the models")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--fp64-steps", type=int, default=30, help="float64 ours-vs-naive check on config (a); 0 skips")
    p.add_argument("--no-control", action="store_true", help="skip the ours-vs-ours-perturbed chaos control")
    p.add_argument("--data", default=None, help="directory holding tinyshakespeare/input.txt (default ../shared/data)")
    p.add_argument("--out", default="train_throughput", help="results name: bench/results/<out>.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data, vocab, source = char_corpus(args.data)
    print(f"data: {source}, vocab {vocab}, threads {torch.get_num_threads()}")
    peak_before = matmul_peak_flops()
    configs = {
        "a": (dict(CONFIG_A, vocab_size=vocab), 64, args.steps_a),
        "b_tiny": (dict(PRESETS["tiny"], vocab_size=vocab), PRESETS["tiny"]["n_positions"], args.steps_b),
    }
    results = {}
    for label, (kwargs, block_size, steps) in configs.items():
        if steps > 0:
            results[label] = bench_config(label, kwargs, block_size, args.batch, steps, args.warmup, args.block,
                                          data, peak_before["peak_flops"], control=not args.no_control)
    fp64 = fp64_check(configs["a"][0], 64, args.batch, args.fp64_steps, data) if args.fp64_steps else None
    peak_after = matmul_peak_flops()
    peak = max(peak_before["peak_flops"], peak_after["peak_flops"])
    for r in results.values():  # MFU against the best peak seen in this run
        for m in r["models"].values():
            m["mfu"] *= peak_before["peak_flops"] / peak
            if "hfu_executed_flops" in m:
                m["hfu_executed_flops"] *= peak_before["peak_flops"] / peak

    print()
    rows = []
    for label, r in results.items():
        for name, m in r["models"].items():
            rows.append([label, f"{r['batch_size']}x{r['block_size']}", name, f"{m['tokens_per_s']:.0f}",
                         f"{m['median_step_ms']:.1f}", f"{100 * m['mfu']:.1f}%",
                         f"{m['tokens_per_s'] / r['models']['naive']['tokens_per_s']:.2f}x"])
    print_table(["config", "batch x block", "model", "tokens/s", "median step ms", "MFU", "vs naive"], rows)
    print(f"\nfp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    for label, r in results.items():
        c = r["loss_curve_ours_vs_naive"]
        print(f"[{label}] speedup ours/naive {r['speedup_ours_vs_naive']:.2f}x "
              f"(median of blocks {r['speedup_ours_vs_naive_median_of_blocks']:.2f}x); "
              f"max |loss diff| first 10 steps {c['max_abs_diff_first_10_steps']:.1e}, all steps {c['max_abs_diff']:.1e} "
              f"(first > 1e-4 at step {c['first_step_above_1e_4']}); "
              f"mean loss last 20: ours {c['mean_last_20_a']:.3f} naive {c['mean_last_20_b']:.3f}")
        if "loss_curve_control_ours_vs_ours_perturbed_1e-7" in r:
            cc = r["loss_curve_control_ours_vs_ours_perturbed_1e-7"]
            print(f"[{label}] control ours vs ours*(1+1e-7 noise): max |loss diff| {cc['max_abs_diff']:.1e} "
                  f"(first > 1e-4 at step {cc['first_step_above_1e_4']})")
    if fp64:
        d, dc = fp64["abs_diff_ours_vs_naive"], fp64["abs_diff_ours_vs_ours_perturbed"]
        show = lambda xs: " ".join(f"{i}:{x:.0e}" for i, x in enumerate(xs) if i % 5 == 0 or i == len(xs) - 1)
        print(f"[a, float64] |loss ours - naive| by step: {show(d)}")
        print(f"[a, float64] |loss ours - ours*(1+1e-12 noise)|: {show(dc)}")

    plot_curves(results, fp64, RESULTS_DIR / f"{args.out}.png")
    save_result(args.out, dict(
        claim="ours >= 2x naive training tokens/s on config (a), same loss curve",
        data_source=source, threads=torch.get_num_threads(),
        matmul_peak_flops=peak, matmul_peak_detail=dict(before=peak_before, after=peak_after),
        configs=results, fp64_check=fp64,
        notes=("tokens/s counts batch*block input tokens per step; attention FLOPs use full T; "
               "config b is the tiny preset with vocab 65 and block = n_positions = 256"),
    ))


if __name__ == "__main__":
    main()
