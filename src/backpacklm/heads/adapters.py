"""Per-architecture access to attention heads and FFN blocks of Hugging Face causal LMs, without forking them.

Transformers 5.x has no `head_mask`; every analysis here works through hooks on plain modules. The input of a
layer's attention output projection is the heads' outputs concatenated head-major: slice [h*d_head, (h+1)*d_head)
is head h (with grouped-query attention there are still `num_attention_heads` slices). One row of `ARCHITECTURES`
per layout says where those modules live; add a row to support another architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import torch
from torch import nn

from ..errors import BackpackError


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one layout. `layers` is relative to the model, the others to one block of `layers`."""

    layers: str          # ModuleList of the transformer blocks
    attention: str       # attention module; under eager attention it returns (output, weights [batch, head, q, k])
    attn_out: str        # attention output projection; its input is [batch, pos, head * d_head], head-major
    ffn_out: str         # module whose output is the FFN block's whole contribution to the residual stream
    value: str           # module whose output holds the value vectors (see `value_layout`)
    value_layout: str    # "gpt2_qkv" (q|k|v concatenated), "separate" (v only, maybe fewer kv heads), "neox_qkv"
    final_norm: str | None  # model-level norm before the unembedding; None if the trunk does not write the logits
    final_proj: str | None = None  # projection between that norm and the unembedding, where the model may have one


GPT2_LAYOUT = ArchSpec("transformer.h", "attn", "attn.c_proj", "mlp", "attn.c_attn", "gpt2_qkv", "transformer.ln_f")
LLAMA_LAYOUT = ArchSpec("model.layers", "self_attn", "self_attn.o_proj", "mlp", "self_attn.v_proj", "separate", "model.norm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": GPT2_LAYOUT,  # GPT2LMHeadModel, also our `--arch transformer`
    # our Backpack: a GPT-2 trunk whose output only weights the sense vectors, so no direct path to the logits
    "backpack": ArchSpec("transformer.h", "attn", "attn.c_proj", "mlp", "attn.c_attn", "gpt2_qkv", None),
    # OPT: no final norm when post-LN (do_layer_norm_before=False, OPT-350m); project_out when word_embed_proj_dim < d
    "opt": ArchSpec("model.decoder.layers", "self_attn", "self_attn.out_proj", "fc2", "self_attn.v_proj", "separate",
                    "model.decoder.final_layer_norm", "model.decoder.project_out"),
    "llama": LLAMA_LAYOUT,
    "mistral": LLAMA_LAYOUT,
    "qwen2": LLAMA_LAYOUT,
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention", "attention.dense", "mlp", "attention.query_key_value",
                         "neox_qkv", "gpt_neox.final_layer_norm"),
}


def _get(root: nn.Module, path: str) -> nn.Module:
    return reduce(getattr, path.split("."), root)


def _in_features(module: nn.Module) -> int:
    """Input width of a Linear (weight [out, in]) or a GPT-2 Conv1D (weight [in, out])."""
    return module.in_features if isinstance(module, nn.Linear) else module.weight.shape[0]


class HeadAdapter:
    """A model seen as `num_layers` blocks of `num_heads` heads of width `head_dim`, plus one FFN per block."""

    def __init__(self, model: nn.Module, arch: str, spec: ArchSpec):
        self.model, self.arch, self.spec = model, arch, spec
        try:
            self.blocks = _get(model, spec.layers)
        except AttributeError:
            raise BackpackError(f"{type(model).__name__} ({arch}) has no '{spec.layers}' blocks") from None
        config = model.config
        self.num_layers = len(self.blocks)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = _in_features(self.attn_out(0)) // self.num_heads

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_layers, self.num_heads)

    def attention(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.attention)

    def attn_out(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.attn_out)

    def ffn_out(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.ffn_out)

    def value_module(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.value)

    def device(self, layer: int) -> torch.device:
        """Where layer `layer`'s attention output projection lives (differs per layer under `device_map`)."""
        return self.attn_out(layer).weight.device

    def values(self, output: torch.Tensor) -> torch.Tensor:
        """The value module's output -> value vectors [batch, pos, head, d_head], one per query head (kv heads of
        grouped-query attention repeated as the attention does)."""
        H, dh = self.num_heads, self.head_dim
        if self.spec.value_layout == "gpt2_qkv":
            return output[..., 2 * H * dh:].unflatten(-1, (H, dh))
        if self.spec.value_layout == "neox_qkv":  # per head: [q | k | v]
            return output.unflatten(-1, (H, 3 * dh))[..., 2 * dh:]
        values = output.unflatten(-1, (self.num_kv_heads, dh))
        return values.repeat_interleave(H // self.num_kv_heads, dim=-2)

    def head_output(self, layer: int, vectors: torch.Tensor) -> torch.Tensor:
        """What head-wise vectors [..., head, d_head] write to the residual stream through the output projection,
        per head and without its bias: [..., head, d_model] (the O part of the OV circuit, eq. W_O^h v)."""
        proj = self.attn_out(layer)
        H, dh = self.num_heads, self.head_dim
        eye = torch.eye(H, device=vectors.device, dtype=vectors.dtype)
        spread = (vectors.unsqueeze(-3) * eye[:, :, None]).flatten(-2)  # [..., head, head * d_head], one head each
        bias = proj.forward(torch.zeros(1, H * dh, device=vectors.device, dtype=vectors.dtype))[0]  # no hooks
        return proj.forward(spread) - bias

    def to_logits_input(self) -> list[nn.Module] | None:
        """Modules from the residual stream to the output embedding's input (final norm, then any projection), or
        None when the stream has no such direct path (our Backpack; a post-LN OPT with no final norm)."""
        norm = None if self.spec.final_norm is None else _get(self.model, self.spec.final_norm)
        if norm is None:
            return None
        proj = None if self.spec.final_proj is None else _get(self.model, self.spec.final_proj)
        return [norm] if proj is None else [norm, proj]

    def check_head(self, layer: int, head: int) -> None:
        if not (0 <= layer < self.num_layers and 0 <= head < self.num_heads):
            raise BackpackError(
                f"head {layer}.{head} is out of range: the model has {self.num_layers} layers of {self.num_heads} heads"
            )

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise BackpackError(f"layer {layer} is out of range: the model has {self.num_layers} layers")


def adapter_for(model: nn.Module) -> HeadAdapter:
    """The adapter of `model`'s architecture (by `config.model_type`); BackpackError if it is not supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise BackpackError(
            f"architecture '{model_type}' ({type(model).__name__}) is not supported for head analysis; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    return HeadAdapter(model, model_type, ARCHITECTURES[model_type])


def parse_heads(text: str, adapter: HeadAdapter) -> list[tuple[int, int]]:
    """'0.1,2.3' -> [(0, 1), (2, 3)] (layer.head), each checked against the model."""
    heads = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            layer, head = (int(x) for x in item.split("."))
        except ValueError:
            raise BackpackError(f"'{item}' is not a head; write LAYER.HEAD, e.g. 0.3") from None
        adapter.check_head(layer, head)
        heads.append((layer, head))
    return heads


def parse_layers(text: str, adapter: HeadAdapter) -> list[int]:
    """'0,2' -> [0, 2], each checked against the model."""
    layers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            layer = int(item)
        except ValueError:
            raise BackpackError(f"'{item}' is not a layer index") from None
        adapter.check_layer(layer)
        layers.append(layer)
    return layers
