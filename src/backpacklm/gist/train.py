"""Gist training (Mu et al. 2023, sec. 3): the ordinary training loop (`backpacklm.train.loop`) on instruction batches.

Each batch is left-padded examples in the gist layout with the condition's attention mask; the loss is on the
completions only. Fine-tune a model directory (`init_from`, any supported causal LM or T5 with its tokenizer;
`<GIST>` is added with a mean-initialised row) or train from scratch (`preset`, a character tokenizer built from the data unless
`tokenizer` names one). Checkpoints, resume, progress and metrics are the loop's.

Encoder-decoder models (T5) get batches in the T5 layout (`t5.py`: source = instruction + gists + input segment,
right-padded; target = output, the loss on all of it), run through `t5.T5GistLoss`, which gives the encoder and the
decoder's cross-attention their own gist masks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.tokenizers import load_tokenizer
from ..errors import BackpackError
from ..model.loading import is_encoder_decoder_dir, load_tokenizer_if_present, max_positions, resolve_model_dir
from ..model.tied_loss import lean_loss
from ..train.checkpoint import latest_checkpoint
from ..train.loop import TrainConfig, train, unigram_loss
from .data import collate, load_examples
from .layout import GIST_TOKEN, IGNORE, add_gist_token, build_gist_char_tokenizer, encode_example, init_gist_rows
from .masks import CONDITIONS
from .t5 import T5GistLoss, check_t5, is_encoder_decoder, t5_collate, t5_encode_example


@dataclass
class GistTrainConfig(TrainConfig):
    """`TrainConfig` (data = the training JSON file) plus the gist settings.

    gists: k, gist tokens per prompt.  condition: gist | pos_control | neg_control.
    val_data: validation JSON file (default: 5% of the training records, at least one, held out).
    tokenizer: for training from scratch: a tokenizer folder or "gpt2" (default: characters of the data).
    skip_long: leave out examples longer than the model's positions (counted in the run's meta) instead of stopping.
    """

    gists: int = 1
    condition: str = "gist"
    val_data: str | None = None
    tokenizer: str | None = None
    skip_long: bool = False
    warmup_steps: int = 50
    eval_interval: int = 100
    eval_batches: int = 10


class InstructionBatches:
    """Batch source for the training loop: random left-padded instruction batches with gist masks (see loop.py);
    for an encoder-decoder model, right-padded T5 batches (input_ids, padding_mask, labels) for `T5GistLoss`."""

    def __init__(self, cfg: GistTrainConfig):
        if cfg.condition not in CONDITIONS:
            raise BackpackError(f"unknown condition {cfg.condition!r}; choose from {', '.join(CONDITIONS)}")
        if not 1 <= cfg.gists <= 64:
            raise BackpackError(f"--gists must be between 1 and 64, got {cfg.gists}")
        if cfg.block_size is not None:  # the loop's windows of a token stream; it was silently ignored here
            raise BackpackError("--block-size does not apply to gist training: each batch holds whole examples "
                                "(--skip-long leaves out those longer than the model's positions)")
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
        model_dir = _model_dir(cfg)
        self.tokenizer = _tokenizer(cfg, model_dir, train_examples + val_examples)
        self.seq2seq = model_dir is not None and is_encoder_decoder_dir(model_dir)
        self.fresh_token = GIST_TOKEN not in self.tokenizer.get_vocab()
        self.gist_id = add_gist_token(self.tokenizer)
        self.condition, self.num_gists, self.skip_long = cfg.condition, cfg.gists, cfg.skip_long
        self.pad_id = self.tokenizer.eos_token_id
        encode = t5_encode_example if self.seq2seq else encode_example
        self.train = [encode(self.tokenizer, e, cfg.gists) for e in train_examples]
        self.val = [encode(self.tokenizer, e, cfg.gists) for e in val_examples]
        n_tokens = sum(len(e.source) + len(e.target) if self.seq2seq else len(e.input_ids) for e in self.train)
        self.meta = {"vocab_size": len(self.tokenizer), "eot_id": self.pad_id, "n_train_examples": len(self.train),
                     "n_train_tokens": n_tokens, "gists": cfg.gists, "condition": cfg.condition}

    def prepare_model(self, model, fresh: bool) -> None:
        """Give the model a (mean-initialised) `<GIST>` row and record the gist settings in its config."""
        if self.seq2seq != is_encoder_decoder(model):
            raise BackpackError("the batches were laid out for another kind of model (encoder-decoder vs decoder-only)")
        if self.seq2seq:
            check_t5(model)
        init_gist_rows(model, self.gist_id, fresh and self.fresh_token)
        positions = max_positions(model)
        if positions and not self.seq2seq:
            self._fit(positions)
        model.config.gist_token_id = self.gist_id
        model.config.gist_condition = self.condition
        model.config.num_gists = self.num_gists

    def _fit(self, positions: int) -> None:
        """Stop at an example longer than `positions` tokens, or with skip_long leave such examples out."""
        long = [e for e in self.train + self.val if len(e.input_ids) > positions]
        if long and not self.skip_long:
            raise BackpackError(f"{len(long)} example(s) have more tokens than the model's {positions} positions "
                                f"(longest {max(len(e.input_ids) for e in long)}); --skip-long leaves them out")
        if long:
            n_train, n_val = len(self.train), len(self.val)
            self.train = [e for e in self.train if len(e.input_ids) <= positions]
            self.val = [e for e in self.val if len(e.input_ids) <= positions]
            if not self.train or not self.val:
                raise BackpackError(f"no {'training' if not self.train else 'validation'} example fits the model's "
                                    f"{positions} positions")
            print(f"left out {n_train - len(self.train)} of {n_train} training and {n_val - len(self.val)} of {n_val} "
                  f"validation examples longer than {positions} tokens")
            self.meta.update(n_train_examples=len(self.train), skipped_long=len(long),
                             n_train_tokens=sum(len(e.input_ids) for e in self.train))

    def training_module(self, model):
        """What the loop calls with each batch: for T5 the model behind `T5GistLoss`, else the model's loss without
        its logits where it allows (model/tied_loss.py)."""
        return T5GistLoss(model, self.gist_id, self.condition) if self.seq2seq else lean_loss(model)

    def _batch(self, examples) -> dict[str, torch.Tensor]:
        if self.seq2seq:
            batch = t5_collate(examples, self.pad_id)
            return {"input_ids": batch.input_ids, "padding_mask": batch.padding_mask, "labels": batch.labels}
        return collate(examples, self.pad_id, self.gist_id, self.condition).model_inputs()

    def train_batch(self, n: int, block_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        picks = torch.randint(len(self.train), (n,), generator=generator).tolist()
        return self._batch([self.train[i] for i in picks])

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Completion tokens the loss averages over (causal LMs shift the labels by one; T5's are the targets)."""
        labels = batch["labels"] if self.seq2seq else batch["labels"][:, 1:]
        return int((labels != IGNORE).sum())

    @torch.no_grad()
    def val_loss(self, model, block_size: int, batch_size: int, max_batches: int, device) -> float:
        """Mean cross-entropy (nats/token) over the completion tokens of the first validation batches."""
        was_training = model.training
        model.eval()
        forward = self.training_module(model)
        total, count = 0.0, 0
        batch_size = max(batch_size, 8)
        for start in range(0, min(len(self.val), batch_size * max_batches), batch_size):
            batch = {k: v.to(device) for k, v in self._batch(self.val[start:start + batch_size]).items()}
            n = self.loss_tokens(batch)
            total += forward(**batch, use_cache=False).loss.item() * n
            count += n
        model.train(was_training)
        return total / max(count, 1)

    def unigram_baseline(self, vocab_size: int) -> float:
        """Unigram cross-entropy of the validation completions under the training completions' frequencies."""
        labels = (lambda e: e.target) if self.seq2seq else (lambda e: e.labels)
        completion = lambda examples: np.array([t for e in examples for t in labels(e) if t != IGNORE], dtype=np.int64)
        return unigram_loss(completion(self.train), completion(self.val), vocab_size)


def _model_dir(cfg: GistTrainConfig) -> Path | None:
    """The directory the run's model comes from: the checkpoint to resume, or the model to fine-tune (None: from
    scratch)."""
    if cfg.resume:
        checkpoint = latest_checkpoint(Path(cfg.out))
        if checkpoint is None:
            raise BackpackError(f"--resume: {cfg.out} holds no checkpoint to resume")
        return checkpoint
    return resolve_model_dir(cfg.init_from) if cfg.init_from else None


def _tokenizer(cfg: GistTrainConfig, model_dir: Path | None, examples):
    if model_dir is not None:
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
