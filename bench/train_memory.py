"""Peak memory and time of one training step (forward + backward + AdamW step): ours vs the naive baseline.

Setting: the `micro` preset (d=384, L=6, k=16, V=50264, 512 positions, dropout 0.1 as preset), batch 8 x 512 tokens,
fp32, random init (seed 0). Batch: tinyshakespeare in GPT-2 BPE ids when ../shared/data has them (else random ids).

Memory, one fresh subprocess per model (`--worker NAME`):
    1. build the model (the naive one copies our weights, then ours is freed) and AdamW(lr=1e-3, betas=(0.9, 0.99));
       create the optimizer state up front with one lr=0 step on zero gradients, then drop the gradients
    2. baseline = current RSS (VmRSS in /proc/self/status)
    3. one training step; step peak = ru_maxrss (resource.getrusage: the process's high-water RSS) - baseline
  Parameters, optimizer state and the interpreter are in the baseline; activations, gradients, logits and temporaries
  are in the step peak. The subprocess runs with MALLOC_MMAP_THRESHOLD_=65536 so glibc serves every tensor with mmap
  and returns it to the OS when freed: RSS then follows live memory. With glibc's default (adaptive) threshold,
  identical runs differed by up to ~400 MiB.
Time: the same process then takes a second step (other batch); both step times are reported. The first includes
first-touch page faults; under the fixed mmap threshold every step pays some (within the machine's noise here).

Variants, with --variants (our model, same weights; measured suggestions, not what ships):
    ours_unshifted_loss  loss = CE(logits.flatten(0, 1), labels shifted left and padded with -100): the same value
                         without ours' `logits[:, :-1].flatten(0, 1)` copy of the [B, T-1, V] logits

Run:  .venv/bin/python bench/train_memory.py [--batch 8 --block 512 --threads 1 --variants]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MiB = 2**20
MODELS = ("ours", "naive")
VARIANTS = ("ours_unshifted_loss",)


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def build(name, preset):
    """(model, loss_fn, config) for one of MODELS + VARIANTS."""
    from backpacklm.model import BackpackConfig, BackpackForCausalLM
    from naive_backpack import NaiveBackpack

    torch.manual_seed(0)
    config = BackpackConfig.from_preset(preset)
    model = BackpackForCausalLM(config).train()
    if name == "naive":
        model = NaiveBackpack.from_ours(model)  # the BackpackForCausalLM is garbage once this returns
        return model, lambda x: model(x, labels=x)[1], config
    if name == "ours_unshifted_loss":
        def loss_fn(x):
            labels = F.pad(x[:, 1:], (0, 1), value=-100)
            return F.cross_entropy(model(x, use_cache=False).logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return model, loss_fn, config
    return model, lambda x: model(x, labels=x, use_cache=False).loss, config


def worker(args) -> dict:
    from common import bpe_corpus, random_windows

    model, loss_fn, config = build(args.worker, args.preset)
    data, source = bpe_corpus(args.data, config.vocab_size)
    batches = [random_windows(data, args.batch, args.block, torch.Generator().manual_seed(s)) for s in (0, 1)]
    distinct = int(torch.unique(batches[0]).numel())
    del data

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for p in model.parameters():  # allocate exp_avg / exp_avg_sq now, without moving the weights
        p.grad = torch.zeros_like(p)
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    opt.zero_grad(set_to_none=True)
    gc.collect()

    baseline, maxrss_before = rss_bytes(), maxrss_bytes()
    times, losses, peaks = [], [], []
    for x in batches:
        t0 = time.perf_counter()
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
        peaks.append(maxrss_bytes())
    return dict(
        model=args.worker, data_source=source, distinct_ids_in_batch=distinct,
        dropout=dict(resid=config.resid_pdrop, embd=config.embd_pdrop, attn=config.attn_pdrop),
        params=sum(p.numel() for p in model.parameters()),
        baseline_rss_mib=baseline / MiB, maxrss_before_step_mib=maxrss_before / MiB,
        maxrss_after_step_mib=peaks[0] / MiB, step_peak_mib=(peaks[0] - baseline) / MiB,
        step_times_s=times, losses=losses,
    )


def run_worker(name, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--preset", args.preset,
           "--batch", str(args.batch), "--block", str(args.block), "--threads", str(args.threads)]
    cmd += ["--data", args.data] if args.data else []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    print(f"{name} in a fresh process ...", flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="micro")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--variants", action="store_true", help="also measure ours_unshifted_loss")
    p.add_argument("--data", default=None, help="directory with tinyshakespeare/ and gpt2_bpe/ (default ../shared/data)")
    p.add_argument("--worker", choices=MODELS + VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", default="train_memory")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from common import print_table, save_result

    names = MODELS + (VARIANTS if args.variants else ())
    results = {name: run_worker(name, args) for name in names}

    print()
    rows = []
    for name, r in results.items():
        t = r["step_times_s"]
        rows.append([name, f"{r['baseline_rss_mib']:.0f}", f"{r['step_peak_mib']:.0f}",
                     f"{r['step_peak_mib'] / results['ours']['step_peak_mib']:.2f}", f"{t[0]:.1f} / {t[1]:.1f}",
                     f"{r['losses'][0]:.4f}"])
    print_table(["model", "RSS after model+AdamW MiB", "step peak MiB", "peak vs ours", "step s (1st / 2nd)", "loss"],
                rows)
    ours, naive = results["ours"], results["naive"]
    peak_ratio = naive["step_peak_mib"] / ours["step_peak_mib"]
    time_ratio = naive["step_times_s"][1] / ours["step_times_s"][1]
    print(f"\nnaive / ours: step peak memory {peak_ratio:.2f}x, step time {time_ratio:.2f}x (second step)")
    save_result(args.out, dict(
        claim="peak memory and time of one training step at the micro preset, batch 8 x 512",
        method="peak RSS (resource.getrusage ru_maxrss) minus RSS after building model + AdamW state; fresh "
               "subprocess per model run with MALLOC_MMAP_THRESHOLD_=65536; step times from the same process",
        preset=args.preset, batch=args.batch, block=args.block, threads=args.threads,
        results=results, naive_over_ours_peak=peak_ratio, naive_over_ours_step_time=time_ratio,
    ))


if __name__ == "__main__":
    main()
