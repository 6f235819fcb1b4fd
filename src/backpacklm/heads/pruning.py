"""Pruning by importance (Bansal et al. 2023): remove heads (one global ranking) or FFNs lowest-importance first and
measure task accuracy; rankings transferred between tasks; an aggregate ranking; rank correlations between tasks.

At p % the round(p/100 * n) least important units are removed.
The 0 % point installs no hook at all, so it is the unmasked accuracy exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from ..atomic import write_json_atomic
from ..errors import BackpackError

HEAD_PERCENTS = tuple(range(0, 100, 10))  # 0, 10, ..., 90
FFN_PERCENTS = tuple(range(0, 60, 10))  # 0, 10, ..., 50


def check_percents(percents) -> list[float]:
    percents = [float(p) for p in percents]
    if not percents:
        raise BackpackError("no pruning percentages given")
    for p in percents:
        if not 0 <= p <= 100:
            raise BackpackError(f"pruning percent {p:g} is out of range: use 0 to 100")
    return percents


def n_removed(percent: float, n_units: int) -> int:
    """round(percent / 100 * n_units), halves rounded up."""
    check_percents([percent])
    return int(np.floor(percent / 100 * n_units + 0.5))


def lowest_first(scores) -> np.ndarray:
    """Flat indices of `scores` from least to most important: the reverse of the most-important-first ranking
    (`HeadImportance.ranking`), so among equal scores the higher index goes first."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    return np.argsort(-flat, kind="stable")[::-1]


def head_prune_mask(scores, percent: float) -> torch.Tensor:
    """[layer, head] mask removing the `percent` % heads of lowest score (one global ranking over all layers)."""
    scores = np.asarray(scores, dtype=np.float64)
    mask = torch.ones(scores.shape)
    removed = lowest_first(scores)[:n_removed(percent, scores.size)]
    mask.view(-1)[torch.as_tensor(removed.copy(), dtype=torch.long)] = 0.0
    return mask


def ffn_prune_mask(scores, percent: float) -> torch.Tensor:
    """[layer] mask removing the `percent` % FFNs of lowest score."""
    return head_prune_mask(np.asarray(scores, dtype=np.float64)[:, None], percent)[:, 0]


@dataclass
class PruningCurve:
    """accuracies[i]: task accuracy with `percents[i]` % of the units (heads or FFNs) removed, `removed[i]` of them."""

    kind: str  # "heads" | "ffn"
    task: str
    ranking: str  # where the importance came from (a task name, "aggregate", ...)
    percents: list[float]
    removed: list[int]
    accuracies: list[float]
    chance: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruningGrid:
    """accuracy[i][j]: with ffn_percents[i] % FFNs and head_percents[j] % heads removed."""

    task: str
    head_percents: list[float]
    ffn_percents: list[float]
    accuracy: list[list[float]]
    chance: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(model, tokenizer, task, head_mask, ffn_mask, eval_kwargs) -> float:
    from .gates import masking
    from .tasks import evaluate_task

    with masking(model, head_mask, ffn_mask):
        return evaluate_task(model, tokenizer, task, **eval_kwargs).accuracy


def head_pruning_curve(model, tokenizer, task, scores, percents=HEAD_PERCENTS, ranking: str = "", k: int = 0,
                       seed: int = 0, batch_size: int = 8, length_normalize="none", progress: bool = True) -> PruningCurve:
    """Accuracy on `task` as heads are removed lowest-`scores`-first (scores [layer, head] from any task)."""
    percents = check_percents(percents)
    scores = np.asarray(scores, dtype=np.float64)
    kwargs = dict(k=k, seed=seed, batch_size=batch_size, length_normalize=length_normalize)
    accuracies = [_accuracy(model, tokenizer, task, head_prune_mask(scores, p), None, kwargs)
                  for p in tqdm(percents, desc=f"head pruning ({task.name})", unit="point", disable=not progress)]
    return PruningCurve("heads", task.name, ranking or task.name, percents,
                        [n_removed(p, scores.size) for p in percents], accuracies, task.chance)


def ffn_pruning_curve(model, tokenizer, task, scores, percents=FFN_PERCENTS, ranking: str = "", k: int = 0,
                      seed: int = 0, batch_size: int = 8, length_normalize="none", progress: bool = True) -> PruningCurve:
    """Accuracy on `task` as FFNs are removed lowest-`scores`-first (scores [layer])."""
    percents = check_percents(percents)
    scores = np.asarray(scores, dtype=np.float64)
    kwargs = dict(k=k, seed=seed, batch_size=batch_size, length_normalize=length_normalize)
    accuracies = [_accuracy(model, tokenizer, task, None, ffn_prune_mask(scores, p), kwargs)
                  for p in tqdm(percents, desc=f"FFN pruning ({task.name})", unit="point", disable=not progress)]
    return PruningCurve("ffn", task.name, ranking or task.name, percents,
                        [n_removed(p, scores.size) for p in percents], accuracies, task.chance)


def pruning_grid(model, tokenizer, task, head_scores, ffn_scores, head_percents=HEAD_PERCENTS,
                 ffn_percents=FFN_PERCENTS, k: int = 0, seed: int = 0, batch_size: int = 8, length_normalize="none",
                 progress: bool = True) -> PruningGrid:
    """Accuracy for every combination of head and FFN pruning levels."""
    head_percents, ffn_percents = check_percents(head_percents), check_percents(ffn_percents)
    kwargs = dict(k=k, seed=seed, batch_size=batch_size, length_normalize=length_normalize)
    points = [(fp, hp) for fp in ffn_percents for hp in head_percents]
    flat = [_accuracy(model, tokenizer, task, head_prune_mask(head_scores, hp), ffn_prune_mask(ffn_scores, fp), kwargs)
            for fp, hp in tqdm(points, desc=f"heads x FFNs ({task.name})", unit="point", disable=not progress)]
    grid = [flat[i * len(head_percents):(i + 1) * len(head_percents)] for i in range(len(ffn_percents))]
    return PruningGrid(task.name, head_percents, ffn_percents, grid, task.chance)


def aggregate_scores(per_task_scores) -> np.ndarray:
    """The aggregate ranking's scores: the mean over tasks of each head's score (arrays of one shape)."""
    arrays = [np.asarray(s, dtype=np.float64) for s in per_task_scores]
    if not arrays:
        raise BackpackError("no importance scores to aggregate")
    if any(a.shape != arrays[0].shape for a in arrays):
        raise BackpackError(f"importance scores of different shapes: {sorted({a.shape for a in arrays})}")
    return np.mean(arrays, axis=0)


def rank_correlation(scores_a, scores_b) -> float:
    """Spearman's rho between two tasks' head rankings, computed over the heads' SCORES (head i paired with head i).

    (The published script correlated the two lists of head indices sorted by score, which pairs unrelated heads and
    changes with the arbitrary numbering of heads.)"""
    a, b = np.asarray(scores_a, dtype=np.float64).ravel(), np.asarray(scores_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise BackpackError(f"cannot correlate importance of {a.size} and {b.size} heads")
    return float(spearmanr(a, b).statistic)


@dataclass
class TransferResult:
    """accuracy[source][target]: `target` task's accuracy with `percent` % heads pruned by `source`'s ranking;
    correlation[a][b]: Spearman's rho of the two tasks' head scores; shots[target]: the k it was evaluated with."""

    percent: float
    tasks: list[str]
    accuracy: dict[str, dict[str, float]]
    correlation: dict[str, dict[str, float]]
    unpruned: dict[str, float] = field(default_factory=dict)
    shots: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def ranking_transfer(model, tokenizer, tasks: dict, scores: dict, percent: float = 50, k: int | dict = 0,
                     seed: int = 0, batch_size: int = 8, length_normalize="none",
                     progress: bool = True) -> TransferResult:
    """Prune `percent` % heads by each source ranking in `scores` (task name -> [layer, head], may include an
    "aggregate") and evaluate every task in `tasks` (name -> Task) with its own shots: `k` is one number for all
    tasks or task name -> k."""
    check_percents([percent])
    shots = {t: int(k[t] if isinstance(k, dict) else k) for t in tasks}
    kwargs = {t: dict(k=shots[t], seed=seed, batch_size=batch_size, length_normalize=length_normalize) for t in tasks}
    pairs = [(s, t) for s in scores for t in tasks]
    accuracy: dict[str, dict[str, float]] = {s: {} for s in scores}
    for source, target in tqdm(pairs, desc="ranking transfer", unit="pair", disable=not progress):
        accuracy[source][target] = _accuracy(model, tokenizer, tasks[target], head_prune_mask(scores[source], percent),
                                             None, kwargs[target])
    unpruned = {t: _accuracy(model, tokenizer, tasks[t], None, None, kwargs[t]) for t in tasks}
    correlation = {a: {b: rank_correlation(scores[a], scores[b]) for b in scores} for a in scores}
    return TransferResult(percent, list(tasks), accuracy, correlation, unpruned, shots)


def save_curves(out_dir: str | Path, curves: list[PruningCurve], name: str) -> dict[str, Path]:
    """<name>.json (all curves) and <name>.png (one line per curve)."""
    from .plots import pruning_curves

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "png": out_dir / f"{name}.png"}
    write_json_atomic(paths["json"], [c.to_dict() for c in curves])
    kind = curves[0].kind
    lines = {f"{c.task} (ranking: {c.ranking})": (c.percents, c.accuracies) for c in curves}
    pruning_curves(lines, paths["png"], xlabel=f"% {'heads' if kind == 'heads' else 'FFNs'} removed",
                   title=f"{kind} pruning", chance=curves[0].chance if len({c.chance for c in curves}) == 1 else None)
    return paths


def save_grid(out_dir: str | Path, grid: PruningGrid, name: str = "pruning_grid") -> dict[str, Path]:
    from .plots import pruning_grid as plot_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "png": out_dir / f"{name}.png"}
    write_json_atomic(paths["json"], grid.to_dict())
    plot_grid(grid.accuracy, grid.head_percents, grid.ffn_percents, paths["png"], title=f"heads x FFNs - {grid.task}")
    return paths
