"""A Backpack and a Transformer with the same trunk, trained on the synthetic sense world: the models the section-6
checks (tests/senses) and the world benchmarks (bench/senses_world.py, bench/topic_control.py) run the methods on.

Layout under `root`: world/ (world.txt, truth.json, data/ = prepared tokens), backpack/ and transformer/ (training
runs). A step whose output is already there is skipped (an interrupted training run resumes), so a kept root is
reused as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..model.loading import load_model
from ..train.loop import TrainConfig, train
from .senses import generate_world, load_truth, prepare_world

ARCHS = ("backpack", "transformer")


@dataclass
class WorldRuns:
    truth: dict  # the world's truth.json
    corpus_dir: Path  # world.txt, truth.json and data/
    backpack_dir: Path  # training runs: load_model / --model take them
    transformer_dir: Path
    summaries: dict  # arch -> the run's summary.json (val_loss, unigram_val_loss, train_seconds, ...)

    def load(self):
        """(backpack, transformer, tokenizer): both models in float32, eval mode."""
        backpack, tokenizer = load_model(self.backpack_dir)
        transformer, _ = load_model(self.transformer_dir)
        return backpack.float(), transformer.float(), tokenizer


def train_world_models(root: str | Path, sizes: dict, *, documents: int, seed: int = 0, **train_settings) -> WorldRuns:
    """Generate and prepare the world (`documents` lines, `seed`), then train both architectures with the `tiny`
    preset overridden by `sizes` (BackpackConfig fields) and `train_settings` (TrainConfig fields: max_steps,
    batch_size, block_size, lr, ...); validation runs once, at the end."""
    root = Path(root)
    corpus_dir = root / "world"
    if not (corpus_dir / "data" / "meta.json").is_file():
        generate_world(corpus_dir, seed=seed, n_documents=documents)
        prepare_world(corpus_dir, corpus_dir / "data")
    settings = dict(eval_interval=10**6, eval_batches=2, threads=1, progress=False) | train_settings
    summaries = {}
    for arch in ARCHS:
        run = root / arch
        if (run / "summary.json").is_file():
            summaries[arch] = json.loads((run / "summary.json").read_text(encoding="utf-8"))
            continue
        summaries[arch] = train(TrainConfig(data=str(corpus_dir / "data"), out=str(run), preset="tiny", arch=arch,
                                            model_overrides=sizes, seed=seed, resume=(run / "latest.json").is_file(),
                                            **settings))
    return WorldRuns(load_truth(corpus_dir), corpus_dir, root / "backpack", root / "transformer", summaries)
