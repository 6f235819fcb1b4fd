"""PNG figures of the head analyses: [layer, head] heatmaps, pruning curves, the heads x FFNs grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import plt, save_figure


def head_heatmap(values, png_path: Path, title: str = "", cmap: str = "viridis", annotate: bool | None = None) -> Path:
    """values [layer, head] as an image, layer 0 at the top; numbers written in the cells when the grid is small."""
    values = np.asarray(values, dtype=np.float64)
    layers, heads = values.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * heads, 14), min(1.5 + 0.4 * layers, 12)))
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    if annotate if annotate is not None else layers * heads <= 64:
        middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
        for (layer, head), v in np.ndenumerate(values):
            ax.text(head, layer, f"{v:.2g}", ha="center", va="center", fontsize=7,
                    color="black" if v > middle else "white")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, png_path)


def pruning_curves(curves: dict[str, tuple[list[float], list[float]]], png_path: Path, xlabel: str,
                   title: str = "", chance: float | None = None) -> Path:
    """label -> (percents removed, accuracies), one line each."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (percents, accuracies) in curves.items():
        ax.plot(percents, accuracies, "o-", lw=1.5, label=label)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, png_path)


def pruning_grid(accuracy, head_percents, ffn_percents, png_path: Path, title: str = "") -> Path:
    """accuracy [ffn_percent, head_percent] as an annotated image."""
    accuracy = np.asarray(accuracy, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(head_percents), 1.5 + 0.45 * len(ffn_percents)))
    image = ax.imshow(accuracy, cmap="magma", vmin=0, vmax=1, aspect="auto", origin="lower")
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_xticks(range(len(head_percents)), [f"{p:g}" for p in head_percents])
    ax.set_yticks(range(len(ffn_percents)), [f"{p:g}" for p in ffn_percents])
    ax.set_xlabel("% heads removed")
    ax.set_ylabel("% FFNs removed")
    for (i, j), v in np.ndenumerate(accuracy):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, png_path)
