"""Gist training (Mu et al. 2023, sec. 3): the ordinary training loop (`backpacklm.train.loop`) on instruction batches.

Each batch is left-padded examples in the gist layout with the condition's attention mask; the loss is on the
completions only. Fine-tune a model directory (`init_from`, any supported causal LM with its tokenizer; `<GIST>` is
added with a mean-initialised row) or train from scratch (`preset`, a character tokenizer built from the data unless
`tokenizer` names one). Checkpoints, resume, progress and metrics are the loop's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.tokenizers import load_tokenizer
from ..errors import BackpackError
from ..model.loading import load_tokenizer_if_present, resolve_model_dir
from ..train.checkpoint import latest_checkpoint
from ..train.loop import TrainConfig, train, unigram_loss
from .data import collate, load_examples
from .layout import GIST_TOKEN, IGNORE, add_gist_token, build_gist_char_tokenizer, encode_example, init_gist_rows
from .masks import CONDITIONS


@dataclass
class GistTrainConfig(TrainConfig):
    """`TrainConfig` (data = the training JSON file) plus the gist settings.

    gists: k, gist tokens per prompt.  condition: gist | pos_control | neg_control.
    val_data: validation JSON file (default: 5% of the training records, at least one, held out).
    tokenizer: for training from scratch: a tokenizer folder or "gpt2" (default: characters of the data).
    """

    gists: int = 1
    condition: str = "gist"
    val_data: str | None = None
    tokenizer: str | None = None
    warmup_steps: int = 50
    eval_interval: int = 100
    eval_batches: int = 10


class InstructionBatches:
    """Batch source for the training loop: random left-padded instruction batches with gist masks (see loop.py)."""

    def __init__(self, cfg: GistTrainConfig):
        if cfg.condition not in CONDITIONS:
            raise BackpackError(f"unknown condition {cfg.condition!r}; choose from {', '.join(CONDITIONS)}")
        if not 1 <= cfg.gists <= 64:
            raise BackpackError(f"--gists must be between 1 and 64, got {cfg.gists}")
        train_examples = load_examples(cfg.data)
        if cfg.val_data:
            val_examples = load_examples(cfg.val_data)
        else:  # a fixed held-out slice, independent of the training seed
            order = list(range(len(train_examples)))
            random.Random(0).shuffle(order)
            n_val = max(1, len(order) // 20) if len(order) > 1 else 0
            held = set(order[:n_val])
            val_examples = [e for i, e in enumerate(train_examples) if i in held] or train_examples
            train_examples = [e for i, e in enumerate(train_examples) if i not in held]
        self.tokenizer = _tokenizer(cfg, train_examples + val_examples)
        self.fresh_token = GIST_TOKEN not in self.tokenizer.get_vocab()
        self.gist_id = add_gist_token(self.tokenizer)
        self.condition, self.num_gists = cfg.condition, cfg.gists
        self.pad_id = self.tokenizer.eos_token_id
        self.train = [encode_example(self.tokenizer, e, cfg.gists) for e in train_examples]
        self.val = [encode_example(self.tokenizer, e, cfg.gists) for e in val_examples]
        self.meta = {"vocab_size": len(self.tokenizer), "eot_id": self.pad_id, "n_train_examples": len(self.train),
                     "n_train_tokens": sum(len(e.input_ids) for e in self.train), "gists": cfg.gists,
                     "condition": cfg.condition}

    def prepare_model(self, model, fresh: bool) -> None:
        """Give the model a (mean-initialised) `<GIST>` row and record the gist settings in its config."""
        init_gist_rows(model, self.gist_id, fresh and self.fresh_token)
        positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        longest = max(len(e.input_ids) for e in self.train + self.val)
        if positions and longest > positions:
            raise BackpackError(f"an example has {longest} tokens, more than the model's {positions} positions")
        model.config.gist_token_id = self.gist_id
        model.config.gist_condition = self.condition
        model.config.num_gists = self.num_gists

    def _batch(self, examples) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_id, self.gist_id, self.condition).model_inputs()

    def train_batch(self, n: int, block_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        picks = torch.randint(len(self.train), (n,), generator=generator).tolist()
        return self._batch([self.train[i] for i in picks])

    @torch.no_grad()
    def val_loss(self, model, block_size: int, batch_size: int, max_batches: int, device) -> float:
        """Mean cross-entropy (nats/token) over the completion tokens of the first validation batches."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        batch_size = max(batch_size, 8)
        for start in range(0, min(len(self.val), batch_size * max_batches), batch_size):
            batch = {k: v.to(device) for k, v in self._batch(self.val[start:start + batch_size]).items()}
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += model(**batch, use_cache=False).loss.item() * n
            count += n
        model.train(was_training)
        return total / max(count, 1)

    def unigram_baseline(self, vocab_size: int) -> float:
        """Unigram cross-entropy of the validation completions under the training completions' frequencies."""
        completion = lambda examples: np.array([t for e in examples for t in e.labels if t != IGNORE], dtype=np.int64)
        return unigram_loss(completion(self.train), completion(self.val), vocab_size)


def _tokenizer(cfg: GistTrainConfig, examples):
    if cfg.resume:
        checkpoint = latest_checkpoint(Path(cfg.out))
        if checkpoint is None:
            raise BackpackError(f"--resume: {cfg.out} holds no checkpoint to resume")
        tokenizer = load_tokenizer_if_present(checkpoint)
    elif cfg.init_from:
        model_dir = resolve_model_dir(cfg.init_from)
        tokenizer = load_tokenizer_if_present(model_dir)
        if tokenizer is None:
            raise BackpackError(f"{model_dir} has no tokenizer files; gist training needs the model's tokenizer")
    elif cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    else:
        return build_gist_char_tokenizer(examples)
    if tokenizer.eos_token_id is None:
        raise BackpackError("the tokenizer has no end-of-text token (needed to end completions and pad)")
    return tokenizer


def train_gist(cfg: GistTrainConfig) -> dict:
    """Train (or resume) a gist model in `cfg.out`; returns the loop's summary. The model directory it writes
    (run/model) holds the tokenizer with `<GIST>` and config fields gist_token_id, num_gists, gist_condition."""
    return train(cfg, InstructionBatches(cfg))
