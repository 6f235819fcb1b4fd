"""Read bench/results/*.json and print Markdown: a summary of the claims, then one table per benchmark.

Run:  .venv/bin/python bench/report.py [--results DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = RESULTS_DIR.parent.parent


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_line(r) -> str:
    m = r.get("machine", {})
    return (f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs, {r.get('threads', m.get('torch_threads'))} "
            f"torch thread(s), torch {m.get('torch_version', '?')}, transformers {m.get('transformers_version', '?')}, "
            f"git {m.get('git_head', '?')}{' + local changes' if m.get('src_changed_since_head') else ''}, "
            f"{m.get('date', '?')}")


def status(ok: bool) -> str:
    return "met" if ok else "**not met**"


def curve_status(curve, control) -> str:
    """met: |diff| <= 1e-4 throughout. Otherwise compare with the control (ours vs ours with 1e-7 weight noise):
    drifting no earlier and no further than our own model does from itself is the most fp32 training can show."""
    if curve["max_abs_diff"] <= 1e-4:
        return "met"
    if control and curve["max_abs_diff_first_10_steps"] <= 1e-4 and curve["max_abs_diff"] <= 2 * control["max_abs_diff"]:
        start, start_control = curve["first_step_above_1e_4"], control["first_step_above_1e_4"]
        if start_control is None or start >= start_control:
            return "met up to the fp32 chaos floor"
        return f"drift at step {start}, control at {start_control}"
    return "**not met**"


# --- one function per benchmark: (summary rows, detail markdown) ----------------------------------------------------
def train_throughput(r):
    summary, rows = [], []
    for label, c in r["configs"].items():
        cfg = c["config"]
        setting = (f"{c['batch_size']}x{c['block_size']} tokens, L={cfg['n_layer']} d={cfg['n_embd']} "
                   f"k={cfg['num_senses']} V={cfg['vocab_size']}")
        ours, naive = c["models"]["ours"], c["models"]["naive"]
        speedup = c["speedup_ours_vs_naive"]
        target = "≥ 2x naive" if label == "a" else "(no target)"
        summary.append([f"training tokens/s, config {label}", setting,
                        f"ours {ours['tokens_per_s']:.0f} vs naive {naive['tokens_per_s']:.0f} tok/s = "
                        f"**{speedup:.2f}x** (MFU {100 * ours['mfu']:.0f}% vs {100 * naive['mfu']:.0f}%)",
                        target, status(speedup >= 2) if label == "a" else "-"])
        curve = c["loss_curve_ours_vs_naive"]
        control = c.get("loss_curve_control_ours_vs_ours_perturbed_1e-7")
        text = (f"first 10 steps {curve['max_abs_diff_first_10_steps']:.0e}; all {c['warmup_steps'] + c['steps_timed']} "
                f"steps {curve['max_abs_diff']:.0e}")
        if control:
            text += f" (chaos floor, ours vs ours·(1+1e-7 noise): {control['max_abs_diff']:.0e})"
        summary.append([f"same loss curve, config {label}", "fp32, AdamW lr 1e-3", text, "~1e-5",
                        curve_status(curve, control)])
        for name, m in c["models"].items():
            rows.append([label, f"{c['batch_size']}x{c['block_size']}", name, f"{m['tokens_per_s']:.0f}",
                         f"{m['median_step_ms']:.1f}", f"{100 * m['mfu']:.1f}%",
                         f"{m['tokens_per_s'] / naive['tokens_per_s']:.2f}x", f"{sum(m['losses'][-20:]) / 20:.3f}"])
    fp64 = r.get("fp64_check")
    if fp64:
        d = fp64["abs_diff_ours_vs_naive"]
        early = max(d[: min(10, len(d))])
        summary.append(["same loss curve, float64", f"config a, {fp64['steps']} steps",
                        f"max diff first 10 steps {early:.0e}; all steps {max(d):.0e}", "~1e-5", status(early <= 1e-5)])
    detail = table(["config", "batch x block", "model", "tokens/s", "median step ms", "MFU", "vs naive",
                    "mean loss, last 20 steps"], rows)
    detail += (f"\n\nfp32 matmul peak {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; data: {r['data_source']}; "
               f"{machine_line(r)}")
    return summary, detail


def generation(r):
    rows = []
    for x in r["results"]:
        med = x["median_ms"]
        rows.append([x["context"], f"{med['cached']:.1f}", f"{med['recompute_ours_full_logits']:.1f}",
                     f"{med['recompute_ours_last_logit']:.1f}", f"{med['recompute_naive']:.1f}",
                     f"{x['speedup_vs_recompute_ours_full_logits']:.1f}x",
                     f"{x['speedup_vs_recompute_ours_last_logit']:.1f}x", f"{x['speedup_vs_recompute_naive']:.1f}x",
                     f"{x['max_abs_logit_diff_cached_vs_full']:.0e}"])
    last = max(r["results"], key=lambda x: x["context"])
    s_full, s_last = last["speedup_vs_recompute_ours_full_logits"], last["speedup_vs_recompute_ours_last_logit"]
    summary = [
        [f"cached decoding, context {last['context']}", f"{r['preset']} preset, greedy, per token",
         f"{last['median_ms']['cached']:.1f} ms vs {last['median_ms']['recompute_ours_full_logits']:.0f} ms recompute = "
         f"**{s_full:.1f}x** ({s_last:.1f}x vs recompute with last logit only)", "≥ 10x", status(s_full >= 10)],
        ["cached logits = full forward", f"{r['preset']}, all timed steps",
         f"max abs diff {r['max_abs_logit_diff_cached_vs_full']:.0e}", "≤ 1e-5",
         status(r["max_abs_logit_diff_cached_vs_full"] <= 1e-5)],
    ]
    detail = table(["context", "cached ms", "recompute ms", "recompute, last logit ms", "recompute naive ms",
                    "speedup", "speedup vs last-logit", "speedup vs naive", "max abs logit diff"], rows)
    detail += f"\n\nprompts: {r['prompt_source']}; {machine_line(r)}"
    return summary, detail


def train_memory(r):
    res = r["results"]
    ours, naive = res["ours"], res["naive"]
    rows = []
    for name, m in res.items():
        t = m.get("step_times_s")
        rows.append([name, f"{m['baseline_rss_mib']:.0f}", f"{m['step_peak_mib']:.0f}",
                     f"{m['step_peak_mib'] / ours['step_peak_mib']:.2f}",
                     " / ".join(f"{x:.1f}" for x in t) if t else "-", f"{m['step_time_s_in_memory_run']:.1f}"])
    summary = [["training step memory and time", f"{r['preset']}, batch {r['batch']}x{r['block']}",
                f"step peak ours {ours['step_peak_mib']:.0f} MiB vs naive {naive['step_peak_mib']:.0f} MiB "
                f"({r['naive_over_ours_peak']:.2f}x); step {sum(ours['step_times_s']) / len(ours['step_times_s']):.1f} s "
                f"vs {sum(naive['step_times_s']) / len(naive['step_times_s']):.1f} s "
                f"({r['naive_over_ours_step_time']:.2f}x)"
                + (f"; ours returning the full logits {res['ours_full_logits']['step_peak_mib']:.0f} MiB"
                   if "ours_full_logits" in res else ""), "(no target)", "-"]]
    detail = table(["model", "RSS after model + AdamW state, MiB", "step peak above that, MiB", "peak vs ours",
                    "step s (alternating process)", "step s (memory process)"], rows)
    detail += f"\n\n{r['method']}; data: {ours['data_source']}; {machine_line(r)}"
    return summary, detail


def profile_train(r):
    parts = r["parts_ms"]
    names = sorted({k.split(" | ", 1)[1] for k in parts}, key=list(k.split(" | ", 1)[1] for k in parts).index)
    rows = [[n, f"{parts[f'ours | {n}']:.1f}", f"{parts[f'naive | {n}']:.1f}",
             f"{parts[f'naive | {n}'] / parts[f'ours | {n}']:.2f}x"] for n in names]
    step = parts["naive | whole fwd+bwd"] + parts["naive | optimizer step"]
    summary = [["where a training step goes (diagnostic)", f"config a, {r['batch']}x{r['block']}",
                f"trunk (same work in both) = {100 * parts['naive | trunk'] / step:.0f}% of the naive step; "
                f"senses ours {parts['ours | senses']:.1f} ms vs naive {parts['naive | senses']:.1f} ms; "
                f"step {r['speedup_step']:.2f}x; ceiling if all but trunk + AdamW were free: "
                f"{r['speedup_ceiling_trunk_only']:.2f}x", "-", "-"]]
    detail = table(["part (forward + backward)", "ours ms", "naive ms", "naive/ours"], rows)
    detail += f"\n\nmedians over interleaved rounds; {machine_line(r)}"
    return summary, detail


def generic(r):
    keys = ", ".join(k for k in r if k not in ("machine", "benchmark"))
    return [[r["benchmark"], "-", f"fields: {keys}", "-", "-"]], f"(no formatter; fields: {keys})"


FORMATTERS = {"train_throughput": train_throughput, "generation": generation, "train_memory": train_memory,
              "profile_train": profile_train}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    results = {path: json.loads(path.read_text()) for path in Path(args.results).glob("*.json")}
    if not results:
        print(f"no results in {args.results}; run the bench scripts first")
        return
    # "benchmark" names the script that wrote the file (the file name is its --out): the claims first, in this
    # order; anything else after, by file name
    names = {path: r.get("benchmark", path.stem) for path, r in results.items()}
    order = list(FORMATTERS)
    rank = lambda path: order.index(names[path]) if names[path] in order else len(order)
    summary, details = [], []
    for path in sorted(results, key=lambda path: (rank(path), path.stem)):
        r, name = results[path], names[path]
        formatter = FORMATTERS.get(name, generic)
        try:
            rows, detail = formatter(r)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:  # a results file from an older script
            rows, detail = generic(r)
            detail += f" (could not format: {type(e).__name__} {e}; rerun the benchmark)"
        summary += rows
        png = path.with_suffix(".png")
        if png.is_file():  # the script's picture of the same run
            shown = png.resolve().relative_to(REPO_ROOT) if png.resolve().is_relative_to(REPO_ROOT) else png
            detail += f"\n\n![{name}]({shown})"
        details.append(f"### {name} ({path.name})\n\n{detail}")
    print("## Benchmark summary\n")
    print(table(["claim", "setting", "result", "target", "status"], summary))
    print()
    print("\n\n".join(details))


if __name__ == "__main__":
    main()
