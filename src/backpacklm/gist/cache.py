"""Gist caching (Mu et al. 2023, sec. 3.2): run "Instruction: ...\\n<GIST>..." once, keep only the gists' keys and
values, and continue any later input from them, in batches of prompts with different instruction lengths.

A compressed prompt holds, for every cache layer, the keys/values of its k gist positions ([heads, k, d_head]; for our
Backpack also the extra sense layer: sense-weight keys [senses, k, d/k] and sense vectors [senses, k, d]) and the
position id that follows the gists. Continuing with position ids from there and letting the input see only the gists
reproduces the uncached gist-masked forward: after the last gist no token may see the instruction anyway.

Batches: every prompt stores the same k positions, so compressed prompts stack without padding; the inputs that
follow are left-padded between the gists and the input (masked), and each row keeps its own position ids.
With `keep="all"` the whole instruction prefix is stored instead (instruction caching, the savings baseline); rows
of different lengths are then left-padded with masked positions.

Encoder-decoder models (T5, `model.config.is_encoder_decoder`) go through `gist/t5.py` from the same entry points:
their compressed prompt is the gists' encoder self-attention keys/values at every layer plus their final encoder
outputs (`encoder_hidden`, what cross-attention reads), in the same file format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import DynamicCache

from ..atomic import replacing
from ..checks import check_fields
from ..errors import BackpackError, first_line
from ..model.loading import max_positions
from ..data.batching import pad_rows
from ..data.tokenizers import encode_strict
from .layout import GIST_TOKEN, GistExample, encode_example, encode_instruction, encode_tail
from .masks import allowed_attention, padded_position_ids, to_additive

FORMAT = "backpacklm-gist-cache/1"


def model_fingerprint(model) -> str:
    """sha256 of the model's configuration (without run-time fields) and its input embedding matrix: a compressed
    prompt is only valid for the model that made it."""
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype", "use_cache",
                                                    "architectures", "output_attentions", "output_hidden_states")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(model.get_input_embeddings().weight.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class CompressedPrompts:
    """N compressed prompts.

    layers: per cache layer (keys, values), each [N, heads, S, d_head] (S = stored positions: k gists, or the whole
        prefix with keep="all"; the Backpack's last layer holds sense keys [N, senses, S, d/k] and senses [N, senses, S, d]).
    valid: [N, S] bool, False on left padding (only with keep="all" and mixed lengths).
    next_position: [N] position id of the first token after the stored prefix.
    instruction_tokens: [N] tokens of "Instruction: ...\\n" (the part the gists replace).
    instructions: the instruction texts.
    num_gists: k.  keep: "gists" or "all".  model_id: `model_fingerprint` of the model that made them.
    encoder_hidden: [N, S, d_model] final encoder outputs of the stored positions (encoder-decoder models only; their
        `layers` are the encoder's self-attention keys/values).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor
    next_position: torch.Tensor
    instruction_tokens: torch.Tensor
    instructions: list[str]
    num_gists: int
    keep: str = "gists"
    model_id: str = ""
    encoder_hidden: torch.Tensor | None = None
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def stored_positions(self) -> torch.Tensor:
        """[N] positions stored per prompt."""
        return self.valid.sum(dim=1)

    def kv_bytes(self) -> torch.Tensor:
        """[N] bytes of keys and values stored per prompt (its real positions, all layers; with encoder outputs)."""
        per_position = sum((k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size())
                           for k, v in self.layers)
        if self.encoder_hidden is not None:
            per_position += self.encoder_hidden.shape[-1] * self.encoder_hidden.element_size()
        return self.stored_positions * per_position

    def select(self, indices) -> "CompressedPrompts":
        """The prompts at `indices`, with all-padding leading columns removed."""
        index = torch.as_tensor(indices, dtype=torch.long)
        valid = self.valid[index]
        start = int((~valid).all(dim=0).long().cumprod(dim=0).sum())  # leading columns that are padding in every row
        return CompressedPrompts(
            layers=[(k[index, :, start:], v[index, :, start:]) for k, v in self.layers],
            valid=valid[:, start:], next_position=self.next_position[index],
            instruction_tokens=self.instruction_tokens[index], instructions=[self.instructions[i] for i in index.tolist()],
            num_gists=self.num_gists, keep=self.keep, model_id=self.model_id,
            encoder_hidden=None if self.encoder_hidden is None else self.encoder_hidden[index, start:],
            metadata=self.metadata,
        )

    def cache(self) -> DynamicCache:
        """A DynamicCache holding these prompts (a fresh copy: generation appends to it)."""
        return DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in self.layers])

    def save(self, path: str | Path) -> Path:
        """One safetensors file (written atomically) with the tensors and JSON metadata identifying the model."""
        path = Path(path)
        tensors = {"valid": self.valid.to(torch.uint8), "next_position": self.next_position,
                   "instruction_tokens": self.instruction_tokens}
        for i, (k, v) in enumerate(self.layers):
            tensors[f"layer.{i}.keys"], tensors[f"layer.{i}.values"] = k.contiguous(), v.contiguous()
        if self.encoder_hidden is not None:
            tensors["encoder_hidden"] = self.encoder_hidden.contiguous()
        header = {"format": FORMAT, "model_id": self.model_id, "num_gists": self.num_gists, "keep": self.keep,
                  "n_layers": len(self.layers), "instructions": self.instructions, **self.metadata}
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            save_file(tensors, tmp, metadata={"gist": json.dumps(header)})
        return path


def _gist_header(f) -> dict:
    """The JSON header `CompressedPrompts.save` stores in a safetensors file's metadata ({} when there is none)."""
    header = json.loads((f.metadata() or {}).get("gist", "{}"))
    return header if isinstance(header, dict) else {}


def is_compressed_file(path: Path) -> bool:
    """Whether `path` is a file `CompressedPrompts.save` wrote (its header names FORMAT); nothing else is replaced."""
    try:
        with safe_open(path, framework="pt") as f:
            return _gist_header(f).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def load_compressed(path: str | Path, model=None) -> CompressedPrompts:
    """Read a file written by `CompressedPrompts.save`; with `model`, check that it made them (one-line error)."""
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            header = _gist_header(f)
            if header.get("format") != FORMAT:
                raise BackpackError(f"{path} is not a compressed-prompt file (written by `backpack gist compress`)")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise BackpackError(f"compressed-prompt file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise BackpackError(f"{path} is not a readable compressed-prompt file ({first_line(err)})") from None
    _check_compressed(path, header, tensors)
    if model is not None and header["model_id"] != model_fingerprint(model):
        raise BackpackError(f"{path} was compressed by another model (its config/weights fingerprint differs)")
    layers = [(tensors[f"layer.{i}.keys"], tensors[f"layer.{i}.values"]) for i in range(header["n_layers"])]
    fixed = ("format", "model_id", "num_gists", "keep", "n_layers", "instructions")
    return CompressedPrompts(
        layers=layers, valid=tensors["valid"].bool(), next_position=tensors["next_position"],
        instruction_tokens=tensors["instruction_tokens"], instructions=header["instructions"],
        num_gists=header["num_gists"], keep=header["keep"], model_id=header["model_id"],
        encoder_hidden=tensors.get("encoder_hidden"), metadata={k: v for k, v in header.items() if k not in fixed},
    )


def _check_compressed(path: Path, header: dict, tensors: dict) -> None:
    """BackpackError naming the first part of a compressed-prompt file that is missing or does not fit the others
    (N prompts, S stored positions: see CompressedPrompts)."""
    def bad(what: str):
        return BackpackError(f"{path} is not a usable compressed-prompt file ({what})")

    for key, kind in (("model_id", str), ("num_gists", int), ("keep", str), ("n_layers", int), ("instructions", list)):
        if not isinstance(header.get(key), kind):
            raise bad(f"header field {key!r} missing or not a {kind.__name__}")
    if header["n_layers"] < 1:
        raise bad(f"n_layers {header['n_layers']}")
    per_prompt = ["next_position", "instruction_tokens"]
    per_layer = [f"layer.{i}.{part}" for i in range(header["n_layers"]) for part in ("keys", "values")]
    if missing := [name for name in ["valid", *per_prompt, *per_layer] if name not in tensors]:
        raise bad(f"no tensor {missing[0]!r}")
    valid = tensors["valid"]
    if valid.dim() != 2:
        raise bad(f"'valid' has shape {list(valid.shape)}, expected [prompts, positions]")
    n, stored = valid.shape
    if len(header["instructions"]) != n:
        raise bad(f"{len(header['instructions'])} instructions for {n} prompts")
    for name in per_prompt:
        if list(tensors[name].shape) != [n]:
            raise bad(f"{name!r} has shape {list(tensors[name].shape)}, expected [{n}]")
    if header["keep"] not in ("gists", "all") or header["num_gists"] < 1:
        raise bad(f"keep {header['keep']!r} with {header['num_gists']} gists")
    for name in per_layer:
        shape = list(tensors[name].shape)
        if len(shape) != 4 or shape[0] != n or shape[2] != stored:
            raise bad(f"{name!r} has shape {shape}, expected [{n}, heads, {stored}, size]")
    # attention layers store keys and values of one shape, the same in every layer; only a Backpack's last cache
    # layer (sense keys [.., d/k] and senses [.., d]) differs
    shapes = [(tensors[f"layer.{i}.keys"].shape, tensors[f"layer.{i}.values"].shape) for i in range(header["n_layers"])]
    attention = shapes[:-1] if shapes[-1][0] != shapes[-1][1] else shapes
    if any(keys != values or keys != attention[0][0] for keys, values in attention):
        raise bad("its attention layers' keys and values differ in shape")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _gist_id(model, tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    if GIST_TOKEN not in vocab:
        raise BackpackError(f"the tokenizer has no {GIST_TOKEN} token: train the model with `backpack gist train` first")
    return vocab[GIST_TOKEN]


def num_gists_of(model, num_gists: int | None = None) -> int:
    """k: as given, else the model's (config.num_gists, written by gist training)."""
    k = num_gists or getattr(model.config, "num_gists", None)
    if not k:
        raise BackpackError("the number of gist tokens is unknown: pass --gists (the model config has no num_gists)")
    return int(k)


@torch.no_grad()
def compress_ids(model, prompts: list[list[int]], gist_id: int, keep: str = "gists", batch_size: int = 16,
                 instructions: list[str] | None = None) -> CompressedPrompts:
    """Compress token-id prompts that each end with the same number of gist tokens (and hold no other gists).

    keep="gists" stores the gists only; keep="all" stores the whole prefix (instruction caching). Encoder-decoder
    models store encoder keys/values and outputs (`t5.t5_compress_rows`).
    """
    from .t5 import is_encoder_decoder, t5_compress_rows

    counts = []
    for i, ids in enumerate(prompts):
        n_gist = sum(1 for t in ids if t == gist_id)
        trailing = len(ids) - len(list(_rstrip(ids, gist_id)))
        if n_gist == 0:
            raise BackpackError(f"prompt {i} has no {GIST_TOKEN} token: nothing to compress it into")
        if trailing != n_gist:
            raise BackpackError(f"prompt {i}: its {GIST_TOKEN} tokens must come last, together (after the instruction)")
        counts.append(n_gist)
    if len(set(counts)) > 1:
        raise BackpackError(f"prompts have different numbers of gist tokens ({sorted(set(counts))}); compress them apart")
    k = counts[0]
    device = _device(model)
    chunks: list[CompressedPrompts] = []
    for start in range(0, len(prompts), batch_size):
        rows = prompts[start:start + batch_size]
        hidden = None
        if is_encoder_decoder(model):
            layers, valid, hidden = t5_compress_rows(model, rows, k, keep)
        else:
            ids, padding = pad_rows(rows, 0, "left")  # padding is masked: any id will do
            ids, padding = ids.to(device), padding.to(device)
            mask = to_additive(allowed_attention(ids, gist_id, "gist", padding), _dtype(model))
            _check_positions(model, padded_position_ids(padding))
            out = model(input_ids=ids, attention_mask=mask, position_ids=padded_position_ids(padding),
                        cache=DynamicCache(), use_cache=True)
            stored = k if keep == "gists" else ids.shape[1]
            layers = [(layer.keys[:, :, -stored:].cpu(), layer.values[:, :, -stored:].cpu())
                      for layer in out.cache.layers]
            valid = padding[:, -stored:].cpu()
        lengths = torch.tensor([len(r) for r in rows])
        chunks.append(CompressedPrompts(
            layers=layers, valid=valid, next_position=lengths, instruction_tokens=lengths - k,
            instructions=(instructions or [""] * len(prompts))[start:start + batch_size], num_gists=k, keep=keep,
            model_id=model_fingerprint(model), encoder_hidden=hidden,
        ))
    return _concatenate(chunks)


def _rstrip(ids: list[int], value: int) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] == value:
        end -= 1
    return ids[:end]


def _check_positions(model, positions: torch.Tensor) -> None:
    limit = max_positions(model)
    if limit and int(positions.max()) >= limit:
        raise BackpackError(f"a prompt needs {int(positions.max()) + 1} positions; the model has {limit}")


def _dtype(model) -> torch.dtype:
    dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


def _concatenate(chunks: list[CompressedPrompts]) -> CompressedPrompts:
    """Stack chunks, left-padding stored positions (masked) to the longest."""
    width = max(c.valid.shape[1] for c in chunks)
    pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t
    layers = []
    for i in range(len(chunks[0].layers)):
        keys = torch.cat([pad(c.layers[i][0], width - c.valid.shape[1]) for c in chunks])
        values = torch.cat([pad(c.layers[i][1], width - c.valid.shape[1]) for c in chunks])
        layers.append((keys, values))
    valid = torch.cat([torch.nn.functional.pad(c.valid, (width - c.valid.shape[1], 0), value=False) for c in chunks])
    first = chunks[0]
    hidden = None
    if first.encoder_hidden is not None:
        hidden = torch.cat([pad(c.encoder_hidden, width - c.valid.shape[1]) for c in chunks])
    return CompressedPrompts(
        layers=layers, valid=valid, next_position=torch.cat([c.next_position for c in chunks]),
        instruction_tokens=torch.cat([c.instruction_tokens for c in chunks]),
        instructions=[s for c in chunks for s in c.instructions], num_gists=first.num_gists, keep=first.keep,
        model_id=first.model_id, encoder_hidden=hidden,
    )


def compress(model, tokenizer, instructions: list[str], num_gists: int | None = None, keep: str = "gists",
             batch_size: int = 16) -> CompressedPrompts:
    """Compress instructions ("Instruction: {instruction}\\n" + k gists each) with a gist-trained model."""
    k = num_gists_of(model, num_gists)
    prompts = [encode_instruction(tokenizer, instruction, k) for instruction in instructions]
    return compress_ids(model, prompts, _gist_id(model, tokenizer), keep, batch_size, list(instructions))


def compress_texts(model, tokenizer, texts: list[str], batch_size: int = 16, keep: str = "gists") -> CompressedPrompts:
    """Compress raw prompt texts that end with their `<GIST>` tokens (e.g. "Instruction: ...\\n<GIST><GIST>");
    `keep` as in `compress_ids`."""
    gist_id = _gist_id(model, tokenizer)
    prompts = [encode_strict(tokenizer, text) for text in texts]
    return compress_ids(model, prompts, gist_id, keep, batch_size, list(texts))


@dataclass
class PrefilledBatch:
    """The state after reading the prompts, ready to decode.

    logits: [batch, pos, vocab] of the tokens just read (left-padded; pos = the longest row), or [batch, 1, vocab]
        of the last token only when prefilled with logits_to_keep=1 (all that decoding needs).
    padding_mask: [batch, pos] True on real tokens.
    cache: the KV cache (prefix + the tokens read).
    key_valid: [batch, keys] bool: which cached keys later tokens may see.
    next_position: [batch] position id of the next token.
    """

    logits: torch.Tensor
    padding_mask: torch.Tensor
    cache: DynamicCache
    key_valid: torch.Tensor
    next_position: torch.Tensor


@torch.no_grad()
def prefill_compressed(model, compressed: CompressedPrompts, tails: list[list[int]], pad_id: int,
                       see_prefix: bool = True, logits_to_keep: int = 0) -> PrefilledBatch:
    """Read `tails[b]` after compressed prompt b: positions continue from its end; the tail sees the stored prefix
    (unless `see_prefix` is False: the neg_control condition) and its own earlier tokens. logits_to_keep: logits of
    the last n positions only (0: all). (T5: `tails` are input segments, see `t5.t5_prefill_compressed`; its logits
    are the first target token's.)"""
    from .t5 import is_encoder_decoder, t5_prefill_compressed

    if is_encoder_decoder(model):
        return t5_prefill_compressed(model, compressed, tails, pad_id, see_prefix)
    if compressed.encoder_hidden is not None:
        raise BackpackError("these compressed prompts were made by an encoder-decoder model, not a decoder-only one")
    device = _device(model)
    ids, padding = pad_rows(tails, pad_id, "left")
    ids, padding = ids.to(device), padding.to(device)
    valid = compressed.valid.to(device) & see_prefix
    cache = DynamicCache(ddp_cache_data=[(k.to(device).clone(), v.to(device).clone()) for k, v in compressed.layers])
    n = ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    tail_keys = causal.unsqueeze(0) & padding.unsqueeze(1) | torch.eye(n, dtype=torch.bool, device=device)
    allowed = torch.cat([valid.unsqueeze(1).expand(-1, n, -1), tail_keys], dim=2).unsqueeze(1)  # [batch, 1, n, S + n]
    positions = padded_position_ids(padding, compressed.next_position.to(device))
    _check_positions(model, positions)
    out = model(input_ids=ids, attention_mask=to_additive(allowed, _dtype(model)), position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=logits_to_keep)
    return PrefilledBatch(out.logits, padding, out.cache, torch.cat([valid, padding], dim=1),
                          positions[:, -1] + 1)


@torch.no_grad()
def prefill_uncached(model, prompts: list[list[int]], gist_id: int | None, condition: str, pad_id: int,
                     logits_to_keep: int = 0) -> PrefilledBatch:
    """Read whole prompts (instruction, gists, input) with the condition's mask: the no-caching path; logits_to_keep
    as in `prefill_compressed`. (T5: the prompts are sources, see `t5.t5_prefill_uncached`.)"""
    from .t5 import is_encoder_decoder, t5_prefill_uncached

    if is_encoder_decoder(model):
        return t5_prefill_uncached(model, prompts, gist_id, condition, pad_id)
    device = _device(model)
    ids, padding = pad_rows(prompts, pad_id, "left")
    ids, padding = ids.to(device), padding.to(device)
    allowed = allowed_attention(ids, gist_id, condition, padding)
    positions = padded_position_ids(padding)
    _check_positions(model, positions)
    out = model(input_ids=ids, attention_mask=to_additive(allowed, _dtype(model)), position_ids=positions,
                cache=DynamicCache(), use_cache=True, logits_to_keep=logits_to_keep)
    # later tokens come after the last gist: they see what the prompt's last token sees
    return PrefilledBatch(out.logits, padding, out.cache, allowed[:, 0, -1], positions[:, -1] + 1)


@dataclass
class SamplingConfig:
    """Greedy when do_sample is False; else softmax(logits / temperature) restricted to the top_k ids (0: all).
    Each row samples from its own stream, seeded by (seed, the row's index in the whole run): an example's sample
    does not depend on the batch it lands in."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        check_fields(self, max_new_tokens="positive_int", temperature="positive_float", top_k="non_negative_int",
                     seed="seed")


@torch.no_grad()
def decode(model, state: PrefilledBatch, eos_id: int, sampling: SamplingConfig = SamplingConfig(),
           first_row: int = 0) -> list[list[int]]:
    """Generate from a prefilled batch; each row stops at end-of-text (included), after max_new_tokens, or at the
    model's last position. first_row: the batch's first row's index in the run (sampling streams).
    (T5: `t5.t5_decode`.)"""
    from .t5 import T5Prefilled, t5_decode

    if isinstance(state, T5Prefilled):
        return t5_decode(model, state, eos_id, sampling, first_row)
    batch = state.logits.shape[0]
    generators = row_generators(sampling, first_row, batch)
    logits, cache, key_valid, position = state.logits[:, -1], state.cache, state.key_valid, state.next_position
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    out: list[list[int]] = [[] for _ in range(batch)]
    for step in range(sampling.max_new_tokens):
        token = choose_next(logits.float(), sampling, generators)
        token = torch.where(done, torch.full_like(token, eos_id), token)
        for b in torch.nonzero(~done).flatten().tolist():
            out[b].append(int(token[b]))
        done |= token == eos_id
        limit = max_positions(model)
        if bool(done.all()) or step == sampling.max_new_tokens - 1 or (limit and int(position.max()) >= limit):
            break
        key_valid = torch.cat([key_valid, torch.ones(batch, 1, dtype=torch.bool, device=key_valid.device)], dim=1)
        mask = to_additive(key_valid.view(batch, 1, 1, -1), _dtype(model))
        logits = model(input_ids=token.view(batch, 1), attention_mask=mask, position_ids=position.view(batch, 1),
                       cache=cache, use_cache=True).logits[:, -1]
        position = position + 1
    return out


def row_generators(sampling: SamplingConfig, first_row: int, batch: int) -> list[torch.Generator] | None:
    """One random stream per row, seed * 1_000_003 + the row's index in the run (None when greedy)."""
    if not sampling.do_sample:
        return None
    return [torch.Generator().manual_seed(sampling.seed * 1_000_003 + first_row + b) for b in range(batch)]


def choose_next(logits: torch.Tensor, sampling: SamplingConfig,
                generators: list[torch.Generator] | None) -> torch.Tensor:
    """Next token ids [batch] from logits [batch, vocab]: argmax, or row b sampled with generators[b] (see
    `SamplingConfig`)."""
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    logits = logits / max(sampling.temperature, 1e-6)
    if sampling.top_k:
        threshold = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = logits.softmax(dim=-1).cpu()
    tokens = [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)]
    return torch.cat(tokens).to(logits.device)


def generate_from_compressed(model, tokenizer, compressed: CompressedPrompts, inputs: list[str],
                             sampling: SamplingConfig = SamplingConfig(), condition: str | None = None,
                             first_row: int = 0) -> list[list[int]]:
    """Completion ids for input b after compressed prompt b (len(inputs) == len(compressed)); first_row: the first
    input's index in the run, when a run is generated in batches (sampling streams, see `SamplingConfig`)."""
    if len(inputs) != len(compressed):
        raise BackpackError(f"{len(inputs)} inputs for {len(compressed)} compressed prompts")
    condition = condition or getattr(model.config, "gist_condition", "gist")
    tails = [tail_ids(model, tokenizer, text) for text in inputs]
    state = prefill_compressed(model, compressed, tails, tokenizer.eos_token_id, see_prefix=condition != "neg_control",
                               logits_to_keep=1)
    return decode(model, state, tokenizer.eos_token_id, sampling, first_row)


def prompt_ids(model, tokenizer, example: GistExample, num_gists: int) -> list[int]:
    """The whole prompt as the uncached model reads it: decoder-only, instruction + gists + tail up to "Output:";
    encoder-decoder, the source (instruction + gists + input segment)."""
    from .t5 import is_encoder_decoder, t5_encode_example

    if is_encoder_decoder(model):
        return t5_encode_example(tokenizer, example, num_gists, with_output=False).source
    return encode_example(tokenizer, example, num_gists, with_output=False).input_ids


def tail_ids(model, tokenizer, input_text: str) -> list[int]:
    """What follows the gists for this input: decoder-only "\nInput: ...\nOutput:", encoder-decoder the input
    segment ("\nInput: ..." + end-of-text)."""
    from .t5 import is_encoder_decoder, t5_encode_segment

    if is_encoder_decoder(model):
        return t5_encode_segment(tokenizer, input_text)
    return encode_tail(tokenizer, GistExample(instruction="", input=input_text))
