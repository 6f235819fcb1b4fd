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
reads the instruction only through them. So a compressed T5 prompt (a `cache.CompressedPrompts` with
`encoder_hidden`) is, per gist, the encoder self-attention keys and values at every layer (what input tokens attend
to) and the final encoder output (what the decoder cross-attends to). T5's relative position bias depends on
key - query offsets only; stored prefixes are left-padded (masked) and the input segment follows right after them in
both paths, so the cached path reproduces the uncached biases exactly.

All masks are additive float [batch, 1, query_pos, key_pos] tensors (0 / finfo.min), which T5 adds to its
position bias under eager and sdpa attention alike. The shared entry points (`cache.compress`,
`cache.generate_from_compressed`, `evaluate.predict`, `savings.measure_savings`, `train.InstructionBatches`) call
this module when `model.config.is_encoder_decoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from ..data.batching import pad_rows
from ..errors import BackpackError
from .cache import CompressedPrompts, SamplingConfig, choose_next, row_generators
from .layout import (
    IGNORE, INPUT_TEMPLATE, GistExample, check_example, check_no_gist, encode_instruction, encode_text, eos_id,
)
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


def is_encoder_decoder(model) -> bool:
    """Whether `model` is an encoder-decoder (T5): the shared gist entry points dispatch on this."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def t5_encode_segment(tokenizer, input_text: str) -> list[int]:
    """Ids of the input segment: `\nInput: {input}` (nothing without input) + end-of-text."""
    check_no_gist(input_text, "input")
    segment = encode_text(tokenizer, INPUT_TEMPLATE.format(input=input_text)) if input_text else []
    return segment + [eos_id(tokenizer)]


def t5_encode_example(tokenizer, example: GistExample, num_gists: int, with_output: bool = True) -> T5Encoded:
    """Token ids of `example` in the T5 layout (see module docstring); without output the target is empty."""
    check_example(example)
    target = encode_text(tokenizer, example.output) + [eos_id(tokenizer)] if with_output else []
    return T5Encoded(encode_instruction(tokenizer, example.instruction, num_gists),
                     t5_encode_segment(tokenizer, example.input), target)


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


def check_t5(model) -> None:
    """A one-line error unless `model` is an encoder-decoder with the ids needed to start and pad targets."""
    if not getattr(model.config, "is_encoder_decoder", False) or not hasattr(model, "encoder"):
        raise BackpackError(f"{type(model).__name__} is not an encoder-decoder (T5) model")
    missing = [name for name in ("decoder_start_token_id", "pad_token_id") if getattr(model.config, name, None) is None]
    if missing:
        raise BackpackError(f"the T5 config has no {' / '.join(missing)} (needed to start and pad targets)")


def t5_gist_encode(model, input_ids, padding_mask, gist_id, condition="gist") -> tuple[BaseModelOutput, torch.Tensor]:
    """Gist-masked encoder: (encoder outputs, last_hidden_state [batch, src_pos, d_model]; cross key mask
    [batch, src_pos]) to pass to the decoder as `encoder_outputs=` and `attention_mask=`."""
    check_t5(model)
    dtype = model.get_input_embeddings().weight.dtype
    encoder_mask, cross = t5_gist_masks(input_ids, gist_id, condition, padding_mask, dtype)
    return model.encoder(input_ids=input_ids, attention_mask=encoder_mask), cross


def t5_gist_forward(model, batch: T5Batch, gist_id: int | None, condition: str = "gist", **kwargs):
    """Seq2SeqLMOutput of the gist-masked model; with `batch.labels` its loss (mean cross-entropy per target token)."""
    encoded, cross = t5_gist_encode(model, batch.input_ids, batch.padding_mask, gist_id, condition)
    return model(encoder_outputs=encoded, attention_mask=cross, labels=batch.labels, **kwargs)




class T5GistLoss(nn.Module):
    """The module the training loop calls on T5 batches: the gist-masked forward with labels (`t5_gist_forward`),
    keyword arguments as `T5Batch` fields. It wraps the model, so DDP and the optimizer see the model's parameters."""

    def __init__(self, model, gist_id: int, condition: str):
        super().__init__()
        self.model, self.gist_id, self.condition = model, gist_id, condition

    def forward(self, input_ids, padding_mask, labels, use_cache: bool = False):
        batch = T5Batch(input_ids, padding_mask, labels)
        return t5_gist_forward(self.model, batch, self.gist_id, self.condition, use_cache=use_cache)


def _run_encoder_blocks(model, input_ids, attention_mask, cache: DynamicCache) -> torch.Tensor:
    """T5's encoder stack with a cache: each self-attention appends its keys/values to `cache` (and attends to what
    it already holds; layer 0's relative position bias then counts query positions from the cached length)."""
    encoder = model.encoder
    hidden = encoder.dropout(encoder.embed_tokens(input_ids))
    position_bias = None
    for block in encoder.block:
        hidden, position_bias, _ = block(hidden, attention_mask, position_bias, cache=cache)
    return encoder.dropout(encoder.final_layer_norm(hidden))


@torch.no_grad()
def t5_compress_rows(model, prefixes: list[list[int]], num_gists: int, keep: str = "gists"):
    """Run each prefix (instruction + its k trailing gists) once through the encoder, bidirectionally and
    left-padded; keep the last k positions (keep="gists") or all (keep="all", instruction caching).

    Returns (layers: per encoder layer (keys, values) [batch, head, stored, d_kv]; valid [batch, stored] bool;
    encoder_hidden [batch, stored, d_model], final encoder outputs). `cache.compress_ids` checks the prefixes."""
    check_t5(model)
    device = model.device
    ids, real = (t.to(device) for t in pad_rows(prefixes, 0, "left"))  # padding is masked: any id will do
    dtype = model.get_input_embeddings().weight.dtype
    mask = to_additive(real.view(len(prefixes), 1, 1, -1).expand(-1, 1, ids.shape[1], -1), dtype)
    cache = DynamicCache()
    hidden = _run_encoder_blocks(model, ids, mask, cache)
    stored = num_gists if keep == "gists" else ids.shape[1]
    layers = [(layer.keys[:, :, -stored:].cpu(), layer.values[:, :, -stored:].cpu()) for layer in cache.layers]
    return layers, real[:, -stored:].cpu(), hidden[:, -stored:].cpu()


def t5_encode_from_compressed(
    model, compressed: CompressedPrompts, segments: list[list[int]], pad_id: int, see_prefix: bool = True
) -> tuple[BaseModelOutput, torch.Tensor]:
    """Encoder outputs for [stored prefix + input segment] of each row from its compressed prompt: (outputs with
    last_hidden_state [batch, stored + seg_pos, d_model], cross key mask [batch, stored + seg_pos] long).

    The segment (right-padded) attends to the stored prefix (unless `see_prefix` is False: neg_control) and to
    itself; equal (up to float rounding) to the gist-masked encoder's outputs at the gist and input positions."""
    check_t5(model)
    if compressed.encoder_hidden is None:
        raise BackpackError("these compressed prompts were made by a decoder-only model, not an encoder-decoder")
    if len(segments) != len(compressed):
        raise BackpackError(f"{len(segments)} inputs for {len(compressed)} compressed prompts")
    if any(len(s) == 0 for s in segments):
        raise BackpackError("an input segment is empty (it holds at least the end-of-text token)")
    device = model.device
    ids, real = (t.to(device) for t in pad_rows(segments, pad_id, "right"))
    keys_real = torch.cat([compressed.valid.to(device) & see_prefix, real], 1)
    prefix_hidden = compressed.encoder_hidden.to(device)
    mask = to_additive(keys_real.view(len(segments), 1, 1, -1).expand(-1, 1, ids.shape[1], -1), prefix_hidden.dtype)
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(compressed.layers):
        cache.update(keys.to(device), values.to(device), layer)
    hidden = _run_encoder_blocks(model, ids, mask, cache)
    return BaseModelOutput(last_hidden_state=torch.cat([prefix_hidden, hidden], 1)), keys_real.long()


@dataclass
class T5Prefilled:
    """The state after the encoder and the first decoder step, ready to decode.

    logits: [batch, 1, vocab] of the first target token.
    encoder_outputs: last_hidden_state [batch, src_pos, d_model].  cross_mask: [batch, src_pos] (1 = visible).
    cache: the decoder's self- and cross-attention cache.
    """

    logits: torch.Tensor
    encoder_outputs: BaseModelOutput
    cross_mask: torch.Tensor
    cache: EncoderDecoderCache


@torch.no_grad()
def t5_prefill(model, encoder_outputs: BaseModelOutput, cross_mask: torch.Tensor) -> T5Prefilled:
    """First decoder step (the decoder start token) on given encoder outputs."""
    check_t5(model)
    batch = cross_mask.shape[0]
    start = torch.full((batch, 1), model.config.decoder_start_token_id, dtype=torch.long, device=cross_mask.device)
    out = model(encoder_outputs=encoder_outputs, attention_mask=cross_mask, decoder_input_ids=start,
                cache=EncoderDecoderCache(DynamicCache(), DynamicCache()), use_cache=True)
    return T5Prefilled(out.logits, encoder_outputs, cross_mask, out.cache)


def t5_prefill_uncached(model, sources: list[list[int]], gist_id: int | None, condition: str, pad_id: int) -> T5Prefilled:
    """Whole sources (instruction, gists, input segment) through the condition-masked encoder: the no-caching path."""
    ids, real = (t.to(model.device) for t in pad_rows(sources, pad_id, "right"))
    with torch.no_grad():
        encoded, cross = t5_gist_encode(model, ids, real, gist_id, condition)
    return t5_prefill(model, encoded, cross)


def t5_prefill_compressed(model, compressed: CompressedPrompts, segments: list[list[int]], pad_id: int,
                          see_prefix: bool = True) -> T5Prefilled:
    with torch.no_grad():
        encoded, cross = t5_encode_from_compressed(model, compressed, segments, pad_id, see_prefix)
    return t5_prefill(model, encoded, cross)


@torch.no_grad()
def t5_decode(model, state: T5Prefilled, eos_id: int, sampling: SamplingConfig = SamplingConfig(),
              first_row: int = 0) -> list[list[int]]:
    """Generate target ids from a prefilled batch, as `cache.decode`: each row stops at end-of-text (included) or
    after max_new_tokens."""
    batch = state.logits.shape[0]
    generators = row_generators(sampling, first_row, batch)
    logits, cache = state.logits[:, -1], state.cache
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    out: list[list[int]] = [[] for _ in range(batch)]
    for step in range(sampling.max_new_tokens):
        token = torch.where(done, torch.full_like(done, eos_id, dtype=torch.long),
                            choose_next(logits.float(), sampling, generators))
        for b in torch.nonzero(~done).flatten().tolist():
            out[b].append(int(token[b]))
        done |= token == eos_id
        if bool(done.all()) or step == sampling.max_new_tokens - 1:
            break
        result = model(encoder_outputs=state.encoder_outputs, attention_mask=state.cross_mask,
                       decoder_input_ids=token.view(batch, 1), cache=cache, use_cache=True)
        logits, cache = result.logits[:, -1], result.cache
    return out
