"""The Backpack language model (Hewitt et al., ACL 2023) as a Hugging Face causal LM.

    senses    C(x_j)                                   [batch, pos, sense, d]   (sense_network.py; once per distinct id)
    context   h = GPT2(x)                              [batch, pos, d]          (GPT-2 trunk, attention scaled by 1/(layer+1))
    weights   alpha_l[i, j] = softmax_{j<=i}(Q_l h_i . K_l h_j / sqrt(d/k))   [batch, sense, pos, pos]
    output    o_i = sum_l sum_{j<=i} alpha_l[i, j] C_l(x_j);   logits_i = E o_i

The sum over j is k-head attention whose values are the sense vectors, so it runs as fused scaled-dot-product
attention and alpha is only materialized when the caller asks for `contextualization`.

Interventions (data passed to forward, so they work the same in training, a forward and cached generation):
    sense_overrides    {token_id: tensor [k, d]}: replace C(x) for that id wherever it occurs.
    sense_multipliers  [batch, key_pos, sense]: multiply alpha_l[i, j] by m[j, l] for every query i (equivalently scale
                       the sense vector C_l(x_j)); key_pos covers past + current positions (extra columns are ignored).

Cache: a DynamicCache whose layers 0..L-1 hold the trunk's keys/values and whose extra layer L holds, per past
position, the sense-weight keys [batch, sense, pos, d/k] (as keys) and the sense vectors [batch, sense, pos, d] (as values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, GenerationMixin, GPT2Model, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2MLP
from transformers.pytorch_utils import Conv1D
from transformers.utils import ModelOutput

from ..errors import BackpackError
from .config import BackpackConfig
from .sense_network import SenseMLP, SenseNetwork
from .tied_loss import IGNORE, next_token_targets, tied_cross_entropy


@dataclass
class BackpackOutput(ModelOutput):
    """loss: mean next-token cross-entropy (nats) when labels are given.
    logits: [batch, pos, vocab] (None with return_logits=False).
    cache: the cache (trunk layers + the sense layer), when use_cache.
    senses: [batch, pos, sense, d_model] sense vectors C(x_j) of the input tokens (after overrides), on request.
    contextualization: [batch, sense, query_pos, key_pos] alpha (after multipliers), on request.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    senses: torch.Tensor | None = None
    contextualization: torch.Tensor | None = None


class SenseWeights(nn.Module):
    """One Linear d -> 2d: the first d outputs are queries, the next d keys, each split into k heads of size d/k."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        self.num_senses = config.num_senses
        self.c_attn = nn.Linear(config.n_embd, 2 * config.n_embd)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [batch, pos, d] -> (queries, keys), each [batch, sense, pos, d/k]."""
        queries, keys = self.c_attn(hidden).chunk(2, dim=-1)
        split = lambda t: t.unflatten(-1, (self.num_senses, -1)).transpose(1, 2)
        return split(queries), split(keys)


class BackpackPreTrainedModel(PreTrainedModel):
    config: BackpackConfig
    config_class = BackpackConfig
    base_model_prefix = "backpack"
    supports_gradient_checkpointing = False
    _no_split_modules = ["GPT2Block", "SenseNetwork"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _keys_to_ignore_on_load_unexpected = [r"attn\.bias", r"attn\.masked_bias"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, 0.02^2) weights, zero biases, LayerNorm 1/0; MLP second Linears and attention output projections
        N(0, (0.02/sqrt(2L))^2) (GPT-2's residual scaling)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            residual = getattr(module, "is_residual_projection", False)
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer) if residual else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class BackpackForCausalLM(BackpackPreTrainedModel, GenerationMixin):
    def __init__(self, config: BackpackConfig):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.sense_network = SenseNetwork(config)
        self.sense_weights = SenseWeights(config)
        for module in self.modules():
            if isinstance(module, (GPT2Attention, GPT2MLP, SenseMLP)):
                module.c_proj.is_residual_projection = True
        self.post_init()

    # --- Hugging Face plumbing -------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.transformer.wte = embeddings

    def get_output_embeddings(self):
        return None  # logits use the input embedding matrix E directly (tied by construction)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = DynamicCache()  # grows to L+1 layers: the trunk's and the sense layer
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    # --- the model -------------------------------------------------------------------------------------------
    def token_senses(self, input_ids: torch.Tensor, sense_overrides: Mapping[int, torch.Tensor] | None = None):
        """Sense vectors C(x) [*input_ids.shape, k, d], computed once per distinct id and gathered to positions."""
        ids, inverse = torch.unique(input_ids, return_inverse=True)
        table = self.sense_network(self.transformer.wte(ids))  # [distinct, k, d]
        if sense_overrides:
            for token_id, vectors in sense_overrides.items():
                hit = (ids == int(token_id)).view(-1, 1, 1)
                table = torch.where(hit, vectors.to(table).expand_as(table), table)
        return table[inverse]

    def _sense_mask(self, attention_mask, batch: int, n_query: int, n_key: int, device) -> torch.Tensor | None:
        """Boolean [batch|1, 1, q, k] (True = may attend) for the sense mixing, or None when plain causal suffices.
        A 4D float mask (additive, 0 / -inf) is used as given, e.g. for gist masking."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(attention_mask.dtype).min / 2
        if attention_mask is None and n_query == n_key:
            return None
        past = n_key - n_query
        query_pos = torch.arange(n_query, device=device).view(-1, 1) + past
        allowed = (torch.arange(n_key, device=device).view(1, -1) <= query_pos).view(1, 1, n_query, n_key)
        if attention_mask is not None:
            keep = attention_mask[:, -n_key:].bool().view(batch, 1, 1, n_key)
            diagonal = torch.arange(n_key, device=device).view(1, -1) == query_pos  # never leave a row empty (padding)
            allowed = (allowed & keep) | diagonal.view(1, 1, n_query, n_key)
        return allowed

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        sense_overrides: Mapping[int, torch.Tensor] | None = None,
        sense_multipliers: torch.Tensor | None = None,
        output_senses: bool = False,
        output_contextualization: bool = False,
        logits_to_keep: int = 0,
        return_logits: bool = True,
        **kwargs,
    ) -> BackpackOutput:
        """input_ids [batch, pos]; attention_mask [batch, past+pos] (1 keep, 0 pad) or additive float
        [batch, 1, pos, past+pos]; labels [batch, pos] (shifted inside; -100 ignored). return_logits=False (with
        labels): loss only, computed chunk-wise without the [batch, pos, V] logits (model/tied_loss.py); logits None."""
        if "past_key_values" in kwargs:  # the cache's name before transformers 5.24; dropping it would decode blind
            if cache is not None:
                raise BackpackError("give the cache as `cache` or `past_key_values`, not both")
            cache = kwargs.pop("past_key_values")
        config = self.config
        checked = input_ids.numel() and not torch.compiler.is_compiling()  # no graph break under torch.compile
        if checked and (int(input_ids.min()) < 0 or int(input_ids.max()) >= config.vocab_size):
            raise BackpackError(
                f"token id {int(input_ids.max()) if int(input_ids.max()) >= config.vocab_size else int(input_ids.min())} "
                f"is out of range for a vocabulary of {config.vocab_size}"
            )
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if use_cache:
            if cache is None:
                cache = DynamicCache()
            if cache.layer_class_to_replicate is None and len(cache.layers) == config.n_layer:
                cache.layers.append(DynamicLayer())  # a cache built from the config: add the sense layer
        batch, n_query = input_ids.shape
        n_past = cache.get_seq_length() if use_cache else 0
        if position_ids is None:  # implicit positions continue after the cache
            if n_past + n_query > config.n_positions:
                raise BackpackError(f"sequence of {n_past + n_query} tokens exceeds the model's {config.n_positions} "
                                    "positions")
        elif checked and int(position_ids.max()) >= config.n_positions:  # a padded cache may be wider than that
            raise BackpackError(f"position id {int(position_ids.max())} is out of range for the model's "
                                f"{config.n_positions} positions")

        hidden = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if use_cache else None,
            use_cache=use_cache,
        ).last_hidden_state  # [batch, pos, d]
        senses = self.token_senses(input_ids, sense_overrides)  # [batch, pos, k, d]

        queries, keys = self.sense_weights(hidden)  # [batch, k, pos, d/k]
        values = senses.transpose(1, 2)  # [batch, k, pos, d]
        if use_cache:
            keys, values = cache.update(keys, values, config.n_layer)
        n_key = keys.shape[2]
        if sense_multipliers is not None:
            values = values * sense_multipliers[:, :n_key].transpose(1, 2).unsqueeze(-1).to(values)
        mask = self._sense_mask(attention_mask, batch, n_query, n_key, input_ids.device)
        scale = 1.0 / math.sqrt(keys.shape[-1])

        contextualization = None
        if output_contextualization:
            scores = queries @ keys.transpose(-1, -2) * scale  # [batch, k, q, key]
            if mask is None:
                mask = torch.ones(n_query, n_key, dtype=torch.bool, device=scores.device).tril(n_key - n_query)
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            contextualization = scores.softmax(dim=-1)
            mixed = contextualization @ values
            if sense_multipliers is not None:  # report alpha after the multipliers
                contextualization = contextualization * sense_multipliers[:, :n_key].transpose(1, 2).unsqueeze(2)
        else:
            mixed = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=mask, is_causal=mask is None and n_query > 1, scale=scale
            )  # [batch, k, q, d]
        outputs = mixed.sum(dim=1)  # [batch, q, d]

        embedding = self.transformer.wte.weight  # E [V, d]: the output layer is tied to it
        logits = loss = None
        if return_logits:
            if logits_to_keep:
                outputs = outputs[:, -logits_to_keep:]
            logits = outputs @ embedding.T  # [batch, q, V]
            if labels is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), next_token_targets(labels), ignore_index=IGNORE)
        elif labels is None:
            raise BackpackError("return_logits=False needs labels: the loss is all it returns")
        else:  # the same loss, computed chunk-wise without the [batch, q, V] logits
            loss = tied_cross_entropy(outputs.flatten(0, 1), embedding, next_token_targets(labels))
        return BackpackOutput(
            loss=loss,
            logits=logits,
            cache=cache if use_cache else None,
            senses=senses if output_senses else None,
            contextualization=contextualization,
        )
