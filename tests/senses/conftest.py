"""Session fixture: the synthetic sense world, and a small Backpack and Transformer trained on it (once per run)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Sizes chosen so both models learn the planted structure in well under a minute each on 1 CPU thread.
WORLD_DOCUMENTS = 3000
MODEL = dict(n_embd=64, n_layer=2, n_head=2, num_senses=4, n_positions=64)
TRAIN = dict(max_steps=450, batch_size=24, block_size=32, lr=5e-3, warmup_steps=20)


@dataclass
class WorldModels:
    backpack: object  # BackpackForCausalLM, eval mode, float32, CPU
    transformer: object  # GPT2LMHeadModel with the same trunk
    tokenizer: object
    truth: dict  # the world's truth.json
    corpus_dir: Path  # holds world.txt, truth.json and data/ (prepared tokens)
    backpack_dir: Path  # the training runs (load_model / --model take them)
    transformer_dir: Path


def train_world_models(root: Path, documents: int = WORLD_DOCUMENTS, seed: int = 0) -> WorldModels:
    from backpacklm.model.loading import load_model
    from backpacklm.train.loop import TrainConfig, train
    from backpacklm.worlds.senses import generate_world, load_truth, prepare_world

    corpus_dir = root / "world"
    if not (corpus_dir / "data" / "meta.json").is_file():
        generate_world(corpus_dir, seed=seed, n_documents=documents)
        prepare_world(corpus_dir, corpus_dir / "data")
    truth = load_truth(corpus_dir)
    models = {}
    for arch in ("backpack", "transformer"):
        if (root / arch / "latest.json").is_file():  # a kept root (BACKPACKLM_TEST_WORLD): trained already
            models[arch], tokenizer = load_model(root / arch)
            continue
        cfg = TrainConfig(data=str(corpus_dir / "data"), out=str(root / arch), preset="tiny", arch=arch,
                          model_overrides=MODEL, eval_interval=10**6, eval_batches=2, threads=1, progress=False,
                          seed=seed, **TRAIN)
        train(cfg)
        models[arch], tokenizer = load_model(root / arch)
    return WorldModels(models["backpack"].float(), models["transformer"].float(), tokenizer, truth, corpus_dir,
                       root / "backpack", root / "transformer")


@pytest.fixture(scope="session")
def world_models(tmp_path_factory) -> WorldModels:
    """Trained in a fresh temporary folder; set BACKPACKLM_TEST_WORLD=DIR to keep the models in DIR and reuse them
    in later sessions (for development: delete DIR after changing the world or the sizes above)."""
    kept = os.environ.get("BACKPACKLM_TEST_WORLD")
    root = Path(kept) if kept else tmp_path_factory.mktemp("sense_world")
    root.mkdir(parents=True, exist_ok=True)
    return train_world_models(root)
