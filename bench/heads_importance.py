"""Head importance cost vs one plain forward + backward, and the pruning sweep time.

Models (random init, fp32): our Backpack `micro` preset (d=384, L=6, H=6, V=50264) and a GPT-2-small-sized
GPT2LMHeadModel (d=768, L=12, H=12, V=50257). Batch: `--batch` sequences of `--block` random token ids, the last 8
tokens of each marked as the answer.

  plain       one forward + backward of the answer loss with parameter gradients (what a training step computes
              before the optimizer), i.e. the baseline
  importance  `importance_from_batches` on the same batch: per-token head gates, frozen parameters (activation
              gradients only), one backward, scores accumulated

Time: the two alternate (`--rounds` rounds after a warm-up), medians reported per 1k tokens, so that load from other
processes hits both alike. Memory: one fresh subprocess per (model, mode) with MALLOC_MMAP_THRESHOLD_=65536 (RSS then
follows live memory); peak = VmHWM (reset after building the model) - RSS after building the model.
`--memory-only` re-measures the memory of an existing results file (bench/results/<out>.json). Pruning sweep:
`head_pruning_curve` at 0..90 % on the built-in copy task (`--sweep-examples` examples, 2-shot, char ids) with the
micro model; time per point.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/heads_importance.py [--batch 2 --block 256 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from common import save_result

MODELS = ("micro", "gpt2-small")
MiB = 2**20


def build(name: str):
    if name == "micro":
        from backpacklm import BackpackConfig, BackpackForCausalLM

        config = BackpackConfig.from_preset("micro", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return BackpackForCausalLM(config).eval()
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()


def make_batch(model, batch: int, block: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50000, (batch, block), generator=g)
    mask = torch.ones_like(ids)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, -8:] = True
    return ids, mask, answer


def plain(model, ids, mask, answer) -> None:
    from backpacklm.heads.importance import answer_nll

    model.zero_grad(set_to_none=True)
    answer_nll(model(input_ids=ids, attention_mask=mask).logits, ids, answer).sum().backward()
    model.zero_grad(set_to_none=True)


def importance(model, ids, mask, answer) -> None:
    from backpacklm.heads.importance import importance_from_batches

    importance_from_batches(model, [(ids, mask, answer)], progress=False)


MODES = {"plain": plain, "importance": importance}


def status_bytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(name: str, mode: str, batch: int, block: int) -> dict:
    """In a fresh process: peak RSS of one `mode` call above the RSS after building the model (the high-water
    mark VmHWM is reset first by writing 5 to /proc/self/clear_refs, so the model's construction does not count)."""
    torch.manual_seed(0)
    model = build(name)
    data = make_batch(model, batch, block)
    base = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    MODES[mode](model, *data)
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM") - base
    return {"peak_mib": peak / MiB, "seconds": seconds}


def timing(name: str, batch: int, block: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = build(name)
    data = make_batch(model, batch, block)
    for fn in MODES.values():  # warm-up
        fn(model, *data)
    times = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else reversed(list(MODES))):
            start = time.perf_counter()
            MODES[mode](model, *data)
            times[mode].append(time.perf_counter() - start)
    tokens = batch * block
    per_1k = {mode: statistics.median(t) / tokens * 1000 for mode, t in times.items()}
    assert all(p.grad is None for p in model.parameters())
    return {"tokens": tokens, "seconds_per_1k_tokens": per_1k, "ratio": per_1k["importance"] / per_1k["plain"],
            "raw_seconds": times}


def sweep(examples: int) -> dict:
    import numpy as np

    from backpacklm.data.tokenizers import build_char_tokenizer
    from backpacklm.heads.pruning import HEAD_PERCENTS, head_pruning_curve
    from backpacklm.heads.tasks import builtin_task
    from backpacklm.worlds.icl_tasks import icl_corpus

    torch.manual_seed(0)
    model = build("micro")
    tok = build_char_tokenizer(icl_corpus(n_prompts=50))
    task = builtin_task("copy", n=examples, seed=0)
    scores = np.random.default_rng(0).random((model.config.n_layer, model.config.n_head))
    start = time.perf_counter()
    curve = head_pruning_curve(model, tok, task, scores, HEAD_PERCENTS, k=2, batch_size=examples, progress=False)
    seconds = time.perf_counter() - start
    return {"model": "micro", "task": "copy", "examples": examples, "shots": 2, "points": len(curve.percents),
            "seconds": seconds, "seconds_per_point": seconds / len(curve.percents), "accuracies": curve.accuracies}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sweep-examples", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="heads_importance", help="results name: bench/results/<out>.json")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"))
    p.add_argument("--memory-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.block)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    if args.memory_only:
        from common import RESULTS_DIR

        results = json.loads((RESULTS_DIR / f"{args.out}.json").read_text())
        results.pop("benchmark"), results.pop("machine")
        args.batch, args.block = results["settings"]["batch"], results["settings"]["block"]
    else:
        results = {"settings": vars(args), "models": {}}
    for name in MODELS:
        entry = results["models"][name] if args.memory_only else timing(name, args.batch, args.block, args.rounds)
        entry["memory"] = {}
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--worker", name, mode, "--batch", str(args.batch),
                                  "--block", str(args.block), "--threads", str(args.threads)],
                                 capture_output=True, text=True, env=env, check=True).stdout
            entry["memory"][mode] = json.loads(out.strip().splitlines()[-1])
        entry["memory_ratio"] = entry["memory"]["importance"]["peak_mib"] / entry["memory"]["plain"]["peak_mib"]
        results["models"][name] = entry
        print(f"{name}: importance {entry['seconds_per_1k_tokens']['importance']:.2f} s/1k tokens vs plain fwd+bwd "
              f"{entry['seconds_per_1k_tokens']['plain']:.2f} = {entry['ratio']:.2f}x (target <= 1.5x); peak "
              f"{entry['memory']['importance']['peak_mib']:.0f} vs {entry['memory']['plain']['peak_mib']:.0f} MiB "
              f"= {entry['memory_ratio']:.2f}x", flush=True)
    if not args.memory_only:
        results["pruning_sweep"] = sweep(args.sweep_examples)
    s = results["pruning_sweep"]
    print(f"pruning sweep (micro, copy, {s['examples']} examples, {s['points']} points): {s['seconds']:.1f} s, "
          f"{s['seconds_per_point']:.2f} s/point")
    save_result(args.out, results)


if __name__ == "__main__":
    main()
