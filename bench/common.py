"""Shared helpers for the benchmark scripts: machine info, data, timing, results on disk.

Scripts run as `.venv/bin/python bench/<script>.py`, so this directory is on sys.path and `from common import ...` works.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"  # ../shared/data relative to the repo root


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> dict:
    """HEAD commit and the files under src/ that differ from it (the code measured may be uncommitted)."""
    import subprocess

    def git(*args):  # stdout as is: porcelain lines start with a status column that may be a space
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines() if line.strip()]
    return dict(git_head=git("rev-parse", "--short", "HEAD").strip(), src_changed_since_head=changed)


def machine_info() -> dict:
    import transformers

    return dict(**git_state(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        python_version=platform.python_version(),
        platform=platform.platform(),
    )


def save_result(name: str, payload: dict) -> Path:
    """Write bench/results/<name>.json with the running script's name under "benchmark" (report.py picks the table
    by it, so a run saved under another name with --out formats the same) and the machine info under "machine"."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": Path(sys.argv[0]).stem, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
    return path


def char_corpus(data_dir: str | Path | None) -> tuple[torch.Tensor, int, str]:
    """Token ids of a char-level corpus, its vocabulary size and a description of where it came from.

    tinyshakespeare/input.txt under data_dir when it exists, else a deterministic synthetic text of 65 characters.
    """
    path = Path(data_dir or DEFAULT_DATA_DIR) / "tinyshakespeare" / "input.txt"
    if path.is_file():
        text, source = path.read_text(), f"tinyshakespeare ({path})"
    else:
        g = torch.Generator().manual_seed(0)
        alphabet = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tinyshakespeare's 65 chars
        # i.i.d. characters from a skewed distribution, so the model has something (unigram statistics) to learn
        probs = torch.linspace(1.0, 0.05, len(alphabet)) ** 2
        ids = torch.multinomial(probs, 1_000_000, replacement=True, generator=g)
        text, source = "".join(alphabet[i] for i in ids.tolist()), "synthetic (deterministic, seed 0)"
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    return data, len(chars), source


def bpe_corpus(data_dir: str | Path | None, vocab_size: int, n_tokens: int = 1_000_000) -> tuple[torch.Tensor, str]:
    """tinyshakespeare in GPT-2 BPE ids (gpt2_bpe/ and tinyshakespeare/ under data_dir) when both exist, else
    uniform random ids below vocab_size (seed 0; the worst case for computing senses once per distinct id)."""
    root = Path(data_dir or DEFAULT_DATA_DIR)
    text, vocab, merges = root / "tinyshakespeare" / "input.txt", root / "gpt2_bpe" / "encoder.json", root / "gpt2_bpe" / "vocab.bpe"
    if text.is_file() and vocab.is_file() and merges.is_file():
        from tokenizers import ByteLevelBPETokenizer

        tokenizer = ByteLevelBPETokenizer.from_file(str(vocab), str(merges))
        ids = torch.tensor(tokenizer.encode(text.read_text()).ids, dtype=torch.long)
        if int(ids.max()) < vocab_size:
            return ids, f"tinyshakespeare, GPT-2 BPE ({root})"
    g = torch.Generator().manual_seed(0)
    return torch.randint(vocab_size, (n_tokens,), generator=g), "uniform random token ids (seed 0)"


def random_windows(data: torch.Tensor, batch: int, block: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, block] windows at random offsets (inputs; the model shifts labels itself)."""
    starts = torch.randint(len(data) - block, (batch,), generator=generator)
    return torch.stack([data[s : s + block] for s in starts.tolist()])


def matmul_peak_flops(sizes=(1024, 1536, 2048), repeats: int = 3) -> dict:
    """This CPU's fp32 matmul throughput: best over sizes and repeats of 2 n^3 / t for torch.matmul."""
    best, per_size = 0.0, {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - t0)
        flops = 2 * n**3 / min(times)
        per_size[str(n)] = flops
        best = max(best, flops)
    return dict(peak_flops=best, per_size=per_size)


def median(xs):
    return statistics.median(xs)


def fmt(x: float, digits: int = 3) -> str:
    """Compact number for tables."""
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def print_table(header: list[str], rows: list[list]) -> None:
    """A plain Markdown table on stdout."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))
