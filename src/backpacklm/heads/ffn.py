"""FFN importance (Bansal et al. 2023): importance of layer l's FFN = accuracy(full model) - accuracy(FFN l removed),
one task evaluation per layer, the FFN block's output zeroed by `masking(ffn_mask=...)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import write_json_atomic
from .adapters import adapter_for
from .gates import ffn_mask_without, masking
from .scores import ScoreTable


@dataclass
class FFNImportance(ScoreTable):
    """scores [layer] = accuracy - accuracy_without[layer] (positive: the task needs that FFN)."""

    kind = "FFN importance"

    scores: np.ndarray
    accuracy: float
    accuracy_without: list[float]
    task: str | None = None
    k: int | None = None
    seed: int | None = None

    def ranking(self) -> list[int]:
        """Layers from most to least important (ties: lower layer first)."""
        return [int(i) for i in np.argsort(-np.asarray(self.scores, dtype=np.float64), kind="stable")]

    def save(self, out_dir: str | Path, name: str = "ffn_importance") -> dict[str, Path]:
        """<name>.json and a bar chart <name>.png."""
        from ..plots import plt, save_figure

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / f"{name}.json", "png": out_dir / f"{name}.png"}
        write_json_atomic(paths["json"], self.to_dict())
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(self.scores) + 2), 3.5))
        ax.bar(range(len(self.scores)), self.scores)
        ax.set_xlabel("layer")
        ax.set_ylabel("accuracy drop without the FFN")
        ax.set_title(f"FFN importance{' - ' + self.task if self.task else ''} (full accuracy {self.accuracy:.3f})",
                     fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        save_figure(fig, paths["png"])
        return paths


def ffn_importance(model, tokenizer, task, k: int = 0, seed: int = 0, batch_size: int = 8,
                   length_normalize: str | bool = "none", head_mask=None, progress: bool = True) -> FFNImportance:
    """Accuracy drop on `task` when each layer's FFN is removed alone (optionally with `head_mask` applied too)."""
    from .tasks import evaluate_task

    adapter = adapter_for(model)
    kwargs = dict(k=k, seed=seed, batch_size=batch_size, length_normalize=length_normalize)
    with masking(model, head_mask):
        full = evaluate_task(model, tokenizer, task, **kwargs).accuracy
    without = []
    for layer in tqdm(range(adapter.num_layers), desc="FFN knock-outs", unit="layer", disable=not progress):
        with masking(model, head_mask, ffn_mask_without(adapter, [layer])):
            without.append(evaluate_task(model, tokenizer, task, **kwargs).accuracy)
    return FFNImportance(scores=full - np.asarray(without), accuracy=full, accuracy_without=without,
                         task=task.name, k=k, seed=seed)
