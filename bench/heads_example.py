"""The README's worked example: train a small Transformer on the built-in copy task with our trainer, then run
`backpack heads importance | ffn | prune | induction | eval` on it. Their outputs (JSON + PNG) go to the folder
bench/results/<out>/, a summary to bench/results/<out>.json (--out, default heads_example).

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/heads_example.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import torch

from common import RESULTS_DIR, save_result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: ICL_TRAINING's)")
    p.add_argument("--work", default="runs/heads_example")
    p.add_argument("--out", default="heads_example", help="results name: bench/results/<out>.json and <out>/")
    args = p.parse_args(argv)
    if not args.out or "/" in args.out:
        p.error("--out is a name, not a path (its folder under bench/results is deleted first)")
    torch.set_num_threads(1)
    from backpacklm.cli.main import main as cli
    from backpacklm.worlds.icl_tasks import ICL_TRAINING, train_icl_model

    shutil.rmtree(args.work, ignore_errors=True)
    out = RESULTS_DIR / args.out
    shutil.rmtree(out, ignore_errors=True)
    timings = {}
    start = time.perf_counter()
    torch.manual_seed(0)
    steps = ICL_TRAINING["max_steps"] if args.steps is None else args.steps
    run = train_icl_model(args.work, ["copy"], max_steps=steps)
    timings["train"] = time.perf_counter() - start
    task = ["--builtin", "copy", "--n", "100", "--batch-size", "50", "--no-progress"]
    commands = {
        "importance": ["heads", "importance", "--model", run, *task, "--out", out],
        "prune": ["heads", "prune", "--model", run, *task, "--importance", out / "importance_copy.json", "--grid",
                  "--head-percents", "0,12.5,25,37.5,50,62.5,75,87.5",
                  "--out", out],
        "induction": ["heads", "induction", "--model", run, "--data", f"{args.work}/data", "--lengths", "4,6,8",
                      "--importance", out / "importance_copy.json", "--out", out, "--no-progress"],
        "eval_pruned_50": ["heads", "eval", "--model", run, *task, "--prune-percent", "50", "--importance",
                           out / "importance_copy.json", "--out", out],
    }
    for name, argv in commands.items():
        start = time.perf_counter()
        assert cli([str(a) for a in argv]) == 0, name
        timings[name] = time.perf_counter() - start
    summary = {
        "importance": json.loads((out / "importance_copy.json").read_text())["scores"],
        "prune": json.loads((out / "prune.json").read_text()),
        "induction": json.loads((out / "induction.json").read_text()),
        "eval_pruned_50": json.loads((out / "eval.json").read_text())[0]["accuracy"],
        "seconds": timings,
        "steps": steps,
    }
    save_result(args.out, summary)


if __name__ == "__main__":
    main()
