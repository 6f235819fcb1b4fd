"""Instruction data in the Alpaca format, and left-padded training batches with gist masks and completion labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.batching import pad_rows
from ..errors import BackpackError
from .layout import GIST_TOKEN, IGNORE, EncodedExample, GistExample
from .masks import gist_attention_mask, padded_position_ids

FIELDS = ("instruction", "input", "output")


def load_examples(path: str | Path, require_output: bool = True) -> list[GistExample]:
    """Records of a JSON list (or JSON Lines) of {"instruction", "input", "output"} objects.

    "input" may be missing or empty (no input); a missing or blank "instruction" (or a missing "output", when
    required), or a field containing the reserved `<GIST>` string, is a one-line error naming the record.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark is dropped
    except (OSError, UnicodeDecodeError) as err:
        raise BackpackError(f"cannot read instruction file {path}: {err}") from None
    try:
        records = json.loads(text)
    except ValueError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as err:
            raise BackpackError(f"{path}: neither a JSON list nor JSON Lines ({err})") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise BackpackError(f"{path}: expected a non-empty JSON list of instruction records")
    required = ("instruction", "output") if require_output else ("instruction",)
    examples = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BackpackError(f"{path}: record {i} is not an object with {', '.join(FIELDS)}")
        missing = [f for f in required if not isinstance(record.get(f), str)]
        if missing:
            raise BackpackError(f"{path}: record {i} has no string field {', '.join(repr(m) for m in missing)}")
        if not record["instruction"].strip():  # nothing to compress (a word tokenizer blamed the token ' \n')
            raise BackpackError(f"{path}: record {i} has an empty 'instruction'")
        if not isinstance(record.get("input", ""), str):
            raise BackpackError(f"{path}: record {i} has a non-string 'input'")
        if reserved := [f for f in FIELDS if isinstance(record.get(f), str) and GIST_TOKEN in record[f]]:
            raise BackpackError(f"{path}: record {i}'s {reserved[0]!r} contains {GIST_TOKEN}, which is reserved "
                                "for gist tokens")
        examples.append(GistExample(record["instruction"], record.get("input") or "", record.get("output", "")))
    return examples


@dataclass
class GistBatch:
    """A left-padded batch.

    input_ids: [batch, pos] (padding = end-of-text id).
    labels: [batch, pos], IGNORE on prompt and padding.
    padding_mask: [batch, pos] bool, True on real tokens.
    attention_mask: [batch, 1, pos, pos] additive float mask (causal + padding + the gist condition).
    position_ids: [batch, pos], counting real tokens only.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    padding_mask: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of a Hugging Face causal LM forward (with labels)."""
        return {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}

    def to(self, device) -> "GistBatch":
        return GistBatch(*(t.to(device) for t in (self.input_ids, self.labels, self.padding_mask,
                                                  self.attention_mask, self.position_ids)))


def collate(examples: list[EncodedExample], pad_id: int, gist_id: int | None, condition: str = "gist",
            dtype: torch.dtype = torch.float32) -> GistBatch:
    """Left-pad encoded examples into one batch with the `condition` mask."""
    input_ids, padding_mask = pad_rows([e.input_ids for e in examples], pad_id, "left")
    labels, _ = pad_rows([e.labels for e in examples], IGNORE, "left")
    return GistBatch(
        input_ids=input_ids,
        labels=labels,
        padding_mask=padding_mask,
        attention_mask=gist_attention_mask(input_ids, gist_id, condition, padding_mask, dtype),
        position_ids=padded_position_ids(padding_mask),
    )
