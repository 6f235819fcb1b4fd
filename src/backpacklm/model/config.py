"""Backpack configuration and named presets.

A Backpack has a GPT-2 trunk (the "contextualization network"), so the config is GPT-2's plus the sense fields.
Notation in docstrings: V vocabulary, d = n_embd, L = n_layer, H = n_head, k = num_senses.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import GPT2Config

from ..checks import check, check_fields
from ..errors import BackpackError

# Published sizes (Hewitt et al. 2023, Table 1 and the stanfordnlp/backpack-gpt2 release): k=16, V=50264, 512 positions.
PRESETS: dict[str, dict] = {
    "micro": dict(n_embd=384, n_layer=6, n_head=6, num_senses=16, vocab_size=50264, n_positions=512),
    "mini": dict(n_embd=640, n_layer=8, n_head=8, num_senses=16, vocab_size=50264, n_positions=512),
    "small": dict(n_embd=768, n_layer=12, n_head=12, num_senses=16, vocab_size=50264, n_positions=512),
    # CPU presets (ours). `tiny` is char-level (vocab set from the data); `tiny-bpe` suits an 8k BPE vocabulary.
    "tiny": dict(n_embd=128, n_layer=4, n_head=4, num_senses=4, vocab_size=128, n_positions=256,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "tiny-bpe": dict(n_embd=256, n_layer=4, n_head=4, num_senses=8, vocab_size=8192, n_positions=256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
}


@strict
class BackpackConfig(GPT2Config):
    r"""GPT-2 settings for the trunk, plus:

    num_senses (k): sense vectors per token.
    sense_intermediate_scale: inner width of the final sense MLP is `sense_intermediate_scale * d` (FFN_2: d -> s*d -> k*d).
    shrink_sense_inner: both sense-network MLP inner widths become d (a cheaper variant).
    """

    model_type = "backpack"

    vocab_size: int = 50264
    n_positions: int = 512
    num_senses: int = 16
    sense_intermediate_scale: int = 4
    shrink_sense_inner: bool = False
    scale_attn_by_inverse_layer_idx: bool = True
    activation_function: str = "gelu_pytorch_tanh"  # = GPT-2's gelu_new (tanh approximation), as one fused kernel
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("n_embd", "n_layer", "n_head", "num_senses", "sense_intermediate_scale"):  # null sizes nothing
            check(name, getattr(self, name), "positive_int")
        check_fields(self, **dict.fromkeys(("vocab_size", "n_positions"), "positive_int"),
                     **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), "unit_interval"),
                     layer_norm_epsilon="positive_float")
        if self.n_embd % self.n_head or self.n_embd % self.num_senses:
            raise BackpackError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} and num_senses={self.num_senses}"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "BackpackConfig":
        """A preset by name (micro, mini, small, tiny, tiny-bpe) with any field overridden."""
        if name not in PRESETS:
            raise BackpackError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def sense_inner_sizes(self) -> tuple[int, int]:
        """Inner widths of (FFN_1, FFN_2) in the sense network."""
        d = self.n_embd
        return (d, d) if self.shrink_sense_inner else (4 * d, self.sense_intermediate_scale * d)

    def parameter_count(self, arch: str = "backpack") -> int:
        """Parameters of the model this config builds, from its sizes (no model built): the trunk (tied embeddings,
        positions, L blocks, final LayerNorm), and for the Backpack the sense network and sense-weight projection."""
        d, k, (inner_1, inner_2) = self.n_embd, self.num_senses, self.sense_inner_sizes
        mlp = self.n_inner or 4 * d
        block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
        trunk = (self.vocab_size + self.n_positions) * d + self.n_layer * block + 2 * d
        if arch == "transformer":
            return trunk
        senses = 6 * d + (d * inner_1 + inner_1) + (inner_1 * d + d) + (d * inner_2 + inner_2) + (inner_2 * k * d + k * d)
        return trunk + senses + (d * 2 * d + 2 * d)


def check_fits_in_memory(config: BackpackConfig, arch: str = "backpack") -> None:
    """BackpackError before building a model whose float32 weights alone exceed this machine's memory (building it
    would fail deep inside torch, or swap for minutes)."""
    import os

    count = config.parameter_count(arch)
    needed = 4 * count
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): let torch report it
        return
    if needed > available:
        raise BackpackError(f"a model of {count:,} parameters needs {needed / 2**30:.1f} GiB for its "
                            f"float32 weights alone; this machine has {available / 2**30:.1f} GiB of memory")
