"""Peak memory and time of one training step (forward + backward + AdamW step): ours vs the naive baseline.

Models: ours as the trainer runs it (loss without the [batch, pos, V] logits: model/tied_loss.py), ours returning the
full logits (`ours_full_logits`, the plain Hugging Face-style call), and the naive baseline (bench/naive_backpack.py).
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
Time: one more subprocess (default allocator) builds both models and alternates training steps, ours then naive
then naive then ours (`--time-rounds` rounds), so that load from other processes hits both alike; step times of
separate processes minutes apart differed by up to 1.5x on this machine. The memory runs' own step times are kept too.

Run:  .venv/bin/python bench/train_memory.py [--batch 8 --block 512 --threads 1]
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

MiB = 2**20
MODELS = ("ours", "ours_full_logits", "naive")  # ours as the trainer runs it; ours returning the logits too


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def build(name, preset):
    """(model, loss_fn, config) for one of MODELS."""
    from backpacklm.model import BackpackConfig, BackpackForCausalLM
    from naive_backpack import NaiveBackpack

    torch.manual_seed(0)
    config = BackpackConfig.from_preset(preset)
    model = BackpackForCausalLM(config).train()
    if name == "naive":
        model = NaiveBackpack.from_ours(model)  # the BackpackForCausalLM is garbage once this returns
        return model, lambda x: model(x, labels=x)[1], config
    if name == "ours_full_logits":
        return model, lambda x: model(x, labels=x, use_cache=False).loss, config
    return model, lambda x: model(x, labels=x, use_cache=False, return_logits=False).loss, config


def worker(args) -> dict:
    from common import bpe_corpus, random_windows

    model, loss_fn, config = build(args.worker, args.preset)
    data, source = bpe_corpus(args.data, config.vocab_size)
    x = random_windows(data, args.batch, args.block, torch.Generator().manual_seed(0))
    del data
    opt = optimizer_with_state(model)

    baseline, maxrss_before = rss_bytes(), maxrss_bytes()
    loss, seconds = train_step(model, opt, loss_fn, x)
    peak = maxrss_bytes()
    return dict(
        model=args.worker, data_source=source, distinct_ids_in_batch=int(torch.unique(x).numel()),
        dropout=dict(resid=config.resid_pdrop, embd=config.embd_pdrop, attn=config.attn_pdrop),
        params=sum(p.numel() for p in model.parameters()),
        baseline_rss_mib=baseline / MiB, maxrss_before_step_mib=maxrss_before / MiB,
        maxrss_after_step_mib=peak / MiB, step_peak_mib=(peak - baseline) / MiB,
        step_time_s_in_memory_run=seconds, loss=loss,
    )


def optimizer_with_state(model):
    """AdamW(lr=1e-3, betas=(0.9, 0.99)) with exp_avg / exp_avg_sq already allocated (an lr=0 step on zero grads)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    opt.zero_grad(set_to_none=True)
    gc.collect()
    return opt


def train_step(model, opt, loss_fn, x):
    t0 = time.perf_counter()
    loss = loss_fn(x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    value = loss.item()
    return value, time.perf_counter() - t0


def timing_worker(args) -> dict:
    """Both models in one process, alternating steps (ours, naive, naive, ours, ...) on the same batches."""
    from common import bpe_corpus, random_windows

    models = {}
    for name in MODELS:
        model, loss_fn, config = build(name, args.preset)
        models[name] = (model, loss_fn, optimizer_with_state(model))
    data, _ = bpe_corpus(args.data, config.vocab_size)
    batches = [random_windows(data, args.batch, args.block, torch.Generator().manual_seed(s))
               for s in range(args.time_rounds)]
    times = {name: [] for name in MODELS}
    for r, x in enumerate(batches):
        for name in (MODELS if r % 2 == 0 else MODELS[::-1]):
            model, loss_fn, opt = models[name]
            times[name].append(train_step(model, opt, loss_fn, x)[1])
    return dict(step_times_s=times)


def run_worker(name, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--preset", args.preset, "--batch", str(args.batch),
           "--block", str(args.block), "--threads", str(args.threads), "--time-rounds", str(args.time_rounds)]
    cmd += ["--data", args.data] if args.data else []
    env = dict(os.environ)
    if name != "time":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    print(f"{'timing all models' if name == 'time' else 'memory: ' + name} in a fresh process ...", flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="micro")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave torch's default)")
    p.add_argument("--data", default=None, help="directory with tinyshakespeare/ and gpt2_bpe/ (default ../shared/data)")
    p.add_argument("--time-rounds", type=int, default=2, help="training steps per model in the timing process")
    p.add_argument("--worker", choices=MODELS + ("time",), help=argparse.SUPPRESS)
    p.add_argument("--out", default="train_memory")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(timing_worker(args) if args.worker == "time" else worker(args)))
        return

    from common import print_table, save_result

    results = {name: run_worker(name, args) for name in MODELS}
    timing = run_worker("time", args)["step_times_s"]
    for name in MODELS:
        results[name]["step_times_s"] = timing[name]

    print()
    rows = []
    for name, r in results.items():
        t = r.get("step_times_s")
        rows.append([name, f"{r['baseline_rss_mib']:.0f}", f"{r['step_peak_mib']:.0f}",
                     f"{r['step_peak_mib'] / results['ours']['step_peak_mib']:.2f}",
                     " / ".join(f"{x:.1f}" for x in t) if t else "-", f"{r['step_time_s_in_memory_run']:.1f}",
                     f"{r['loss']:.4f}"])
    print_table(["model", "RSS after model+AdamW MiB", "step peak MiB", "peak vs ours", "step s (alternating)",
                 "step s (memory run)", "loss"], rows)
    ours, full, naive = results["ours"], results["ours_full_logits"], results["naive"]
    peak_ratio = naive["step_peak_mib"] / ours["step_peak_mib"]
    time_ratio = sum(naive["step_times_s"]) / sum(ours["step_times_s"])
    logits_ratio = full["step_peak_mib"] / ours["step_peak_mib"]
    print(f"\nnaive / ours: step peak memory {peak_ratio:.2f}x, step time {time_ratio:.2f}x (alternating steps); "
          f"ours with full logits / ours: step peak {logits_ratio:.2f}x")
    save_result(args.out, dict(
        claim="peak memory and time of one training step at the micro preset, batch 8 x 512",
        method="peak RSS (resource.getrusage ru_maxrss) minus RSS after building model + AdamW state; fresh "
               "subprocess per model run with MALLOC_MMAP_THRESHOLD_=65536; step times from one more process "
               "alternating ours and naive steps (default malloc)",
        preset=args.preset, batch=args.batch, block=args.block, threads=args.threads,
        results=results, naive_over_ours_peak=peak_ratio, naive_over_ours_step_time=time_ratio,
        full_logits_over_ours_peak=logits_ratio,
    ))


if __name__ == "__main__":
    main()
