"""Matplotlib figures written as PNG files (headless backend)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import replacing  # noqa: E402


def save_figure(fig, png_path: Path, dpi: int = 120) -> Path:
    """Lay out, write atomically as PNG, and close the figure."""
    png_path = Path(png_path)
    fig.tight_layout()
    with replacing(png_path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return png_path


def loss_curve(metrics_path: Path, png_path: Path, baseline: float | None = None) -> Path:
    """Training and validation loss (nats/token) against step, from a metrics.jsonl file."""
    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", lw=1.5)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"unigram baseline ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png_path)
