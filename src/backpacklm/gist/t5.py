"""Gist tokens for encoder-decoder T5 (Mu et al. 2023, sec. 3 and app. A): masks, gist-masked forward, compression
and generation from compressed prompts, batched, on Hugging Face `T5ForConditionalGeneration`.

Layout: source = `Instruction: {instruction}\\n` + k `<GIST>` + `\\nInput: {input}` + end-of-text (the "input
segment" is everything after the last gist, so it is never empty); target = `{output}` + end-of-text.

Masks, with g_first / g_last the first / last gist of a row (and never onto padding):

    condition     encoder query i <= g_last sees   encoder query i > g_last sees   decoder cross-attention sees
    gist          j <= g_last (instruction+gists)   j >= g_first (gists+input)      j >= g_first
    pos_control   every j                           every j                         every j
    neg_control   j <= g_last                       j > g_last (input only)         j > g_last

Under `gist` the gists' hidden states at every encoder layer depend on the instruction only, and the input segment
reads the instruction only through them. So a compressed prompt (`T5CompressedPrompt`) is, per gist, the encoder
self-attention keys and values at every layer (what input tokens attend to) and the final encoder output (what the
decoder cross-attends to). T5's relative position bias depends on key - query offsets only; the input segment
starts right after the gists in both paths, so the cached path reproduces the uncached biases exactly.

All masks are additive float [batch, 1, query_pos, key_pos] tensors (0 / finfo.min), which T5 adds to its
position bias under eager and sdpa attention alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutput

from ..data.tokenizers import encode_strict
from ..data.batching import pad_rows
from ..errors import BackpackError
from .layout import IGNORE, INPUT_TEMPLATE, GistExample, eos_id, encode_instruction
from .masks import CONDITIONS, gist_bounds, to_additive


@dataclass
class T5Encoded:
    """One example in the T5 gist layout. source = prefix (instruction + k gists) + segment (input + eos)."""

    prefix: list[int]
    segment: list[int]
    target: list[int]

    @property
    def source(self) -> list[int]:
        return self.prefix + self.segment


def t5_encode_example(tokenizer, example: GistExample, num_gists: int) -> T5Encoded:
    """Token ids of `example` in the T5 layout (see module docstring)."""
    eos = eos_id(tokenizer)
    segment = encode_strict(tokenizer, INPUT_TEMPLATE.format(input=example.input)) if example.input else []
    target = encode_strict(tokenizer, example.output) + [eos]
    return T5Encoded(encode_instruction(tokenizer, example.instruction, num_gists), segment + [eos], target)


@dataclass
class T5Batch:
    """input_ids, padding_mask: [batch, src_pos]; labels: [batch, tgt_pos] (IGNORE on padding)."""

    input_ids: torch.Tensor
    padding_mask: torch.Tensor
    labels: torch.Tensor


def t5_collate(examples: list[T5Encoded], pad_id: int) -> T5Batch:
    input_ids, padding_mask = pad_rows([e.source for e in examples], pad_id, "right")
    labels, _ = pad_rows([e.target for e in examples], IGNORE, "right")
    return T5Batch(input_ids, padding_mask, labels)


def t5_allowed_attention(
    input_ids: torch.Tensor, gist_id: int | None, condition: str = "gist", padding_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder [batch, 1, src_pos, src_pos], cross [batch, src_pos]) booleans: True where query i may attend to key j
    (see the module docstring's table). A row without gists is plain bidirectional with full cross-attention."""
    if condition not in CONDITIONS:
        raise BackpackError(f"unknown gist condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    batch, n = input_ids.shape
    real = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else padding_mask.bool()
    first, last = (b.view(batch, 1, 1) for b in gist_bounds(input_ids, gist_id))
    query = torch.arange(n, device=input_ids.device).view(1, n, 1)
    key = torch.arange(n, device=input_ids.device).view(1, 1, n)
    if condition == "pos_control":
        encoder = torch.ones(batch, n, n, dtype=torch.bool, device=input_ids.device)
        cross = torch.ones(batch, 1, n, dtype=torch.bool, device=input_ids.device)
    else:
        segment_start = first if condition == "gist" else last + 1  # first key an input-segment query may see
        plain = (last == n).view(batch, 1, 1)  # no gists in the row
        encoder = torch.where(query <= last, key <= last, key >= segment_start) | plain
        cross = (key >= segment_start) | plain
    encoder = encoder & real.view(batch, 1, n)
    cross = cross.view(batch, n) & real
    return encoder.unsqueeze(1), cross


def t5_gist_masks(
    input_ids: torch.Tensor,
    gist_id: int | None,
    condition: str = "gist",
    padding_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(additive float encoder mask [batch, 1, src_pos, src_pos], cross-attention key mask [batch, src_pos] long)."""
    encoder, cross = t5_allowed_attention(input_ids, gist_id, condition, padding_mask)
    return to_additive(encoder, dtype), cross.long()


def _check_t5(model) -> None:
    if not getattr(model.config, "is_encoder_decoder", False) or not hasattr(model, "encoder"):
        raise BackpackError(f"{type(model).__name__} is not an encoder-decoder (T5) model")


def t5_gist_encode(model, input_ids, padding_mask, gist_id, condition="gist") -> tuple[BaseModelOutput, torch.Tensor]:
    """Gist-masked encoder: (encoder outputs, last_hidden_state [batch, src_pos, d_model]; cross key mask
    [batch, src_pos]) to pass to the decoder as `encoder_outputs=` and `attention_mask=`."""
    _check_t5(model)
    dtype = model.get_input_embeddings().weight.dtype
    encoder_mask, cross = t5_gist_masks(input_ids, gist_id, condition, padding_mask, dtype)
    return model.encoder(input_ids=input_ids, attention_mask=encoder_mask), cross


def t5_gist_forward(model, batch: T5Batch, gist_id: int | None, condition: str = "gist", **kwargs):
    """Seq2SeqLMOutput of the gist-masked model; with `batch.labels` its loss (mean cross-entropy per target token)."""
    encoded, cross = t5_gist_encode(model, batch.input_ids, batch.padding_mask, gist_id, condition)
    return model(encoder_outputs=encoded, attention_mask=cross, labels=batch.labels, **kwargs)


@dataclass
class T5CompressedPrompt:
    """Compressed prompts (one per row) for a T5 model: everything the input segment and the decoder read.

    keys, values: [layer, batch, head, gist, d_kv], the gists' encoder self-attention keys/values per layer.
    hidden: [batch, gist, d_model], the gists' final encoder outputs (after the final layer norm).
    """

    keys: torch.Tensor
    values: torch.Tensor
    hidden: torch.Tensor

    @property
    def num_gists(self) -> int:
        return self.hidden.shape[1]

    def nbytes(self) -> int:
        """Bytes stored for all rows."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.hidden))

    def select(self, rows: list[int]) -> "T5CompressedPrompt":
        return T5CompressedPrompt(self.keys[:, rows], self.values[:, rows], self.hidden[rows])

    @staticmethod
    def cat(prompts: list["T5CompressedPrompt"]) -> "T5CompressedPrompt":
        return T5CompressedPrompt(
            torch.cat([p.keys for p in prompts], 1), torch.cat([p.values for p in prompts], 1),
            torch.cat([p.hidden for p in prompts], 0),
        )


def _run_encoder_blocks(model, input_ids, attention_mask, cache: DynamicCache) -> torch.Tensor:
    """T5's encoder stack with a cache: each self-attention appends its keys/values to `cache` (and attends to what
    it already holds; layer 0's relative position bias then counts query positions from the cached length)."""
    encoder = model.encoder
    hidden = encoder.dropout(encoder.embed_tokens(input_ids))
    position_bias = None
    for block in encoder.block:
        hidden, position_bias, _ = block(hidden, attention_mask, position_bias, past_key_values=cache)
    return encoder.dropout(encoder.final_layer_norm(hidden))


@torch.no_grad()
def t5_compress(model, prefixes: list[list[int]], gist_id: int) -> T5CompressedPrompt:
    """Run each prefix (instruction + k gists, the same k for all) once, bidirectionally; keep only the gists."""
    _check_t5(model)
    counts = {sum(t == gist_id for t in p) for p in prefixes}
    if 0 in counts or any(p[-1] != gist_id for p in prefixes):
        raise BackpackError("every prompt to compress must end with its <GIST> tokens")
    if len(counts) != 1:
        raise BackpackError(f"prompts compressed together must have the same number of gists, got {sorted(counts)}")
    k = counts.pop()
    ids, real = pad_rows(prefixes, gist_id, "right")
    dtype = model.get_input_embeddings().weight.dtype
    mask = to_additive(real.view(len(prefixes), 1, 1, -1).expand(-1, 1, ids.shape[1], -1), dtype)
    cache = DynamicCache()
    hidden = _run_encoder_blocks(model, ids, mask, cache)
    lengths = real.sum(1)
    gist_pos = (lengths.view(-1, 1) - k + torch.arange(k).view(1, k)).to(ids.device)  # [batch, gist]
    rows = torch.arange(len(prefixes), device=ids.device).view(-1, 1)
    keys = torch.stack([cache.layers[i].keys[rows, :, gist_pos].transpose(1, 2) for i in range(len(cache.layers))])
    values = torch.stack([cache.layers[i].values[rows, :, gist_pos].transpose(1, 2) for i in range(len(cache.layers))])
    return T5CompressedPrompt(keys.contiguous(), values.contiguous(), hidden[rows, gist_pos].contiguous())


def t5_encode_from_compressed(
    model, prompt: T5CompressedPrompt, segments: list[list[int]], pad_id: int
) -> tuple[BaseModelOutput, torch.Tensor]:
    """Encoder outputs for [gists + input segment] of each row from its compressed prompt: (outputs with
    last_hidden_state [batch, gist + seg_pos, d_model], cross key mask [batch, gist + seg_pos]).

    Equal (up to float rounding) to the gist-masked encoder's outputs at the gist and input positions."""
    _check_t5(model)
    if len(segments) != prompt.hidden.shape[0]:
        raise BackpackError(f"{len(segments)} inputs for {prompt.hidden.shape[0]} compressed prompts")
    if any(len(s) == 0 for s in segments):
        raise BackpackError("an input segment is empty (it holds at least the end-of-text token)")
    ids, real = pad_rows(segments, pad_id, "right")
    ids, real = ids.to(prompt.hidden.device), real.to(prompt.hidden.device)
    batch, k = prompt.hidden.shape[:2]
    keys_real = torch.cat([torch.ones(batch, k, dtype=torch.bool, device=real.device), real], 1)
    mask = to_additive(keys_real.view(batch, 1, 1, -1).expand(-1, 1, ids.shape[1], -1), prompt.hidden.dtype)
    cache = DynamicCache()
    for layer in range(prompt.keys.shape[0]):
        cache.update(prompt.keys[layer], prompt.values[layer], layer)
    hidden = _run_encoder_blocks(model, ids, mask, cache)
    return BaseModelOutput(last_hidden_state=torch.cat([prompt.hidden, hidden], 1)), keys_real.long()


@torch.no_grad()
def t5_generate(model, encoder_outputs: BaseModelOutput, cross_mask: torch.Tensor, **generate_kwargs) -> torch.Tensor:
    """`model.generate` from precomputed encoder outputs (uncached gist-masked or from compressed prompts);
    returns the generated target ids [batch, new_pos] (without the decoder start token)."""
    out = model.generate(encoder_outputs=encoder_outputs, attention_mask=cross_mask, **generate_kwargs)
    return out[:, 1:]
