"""PPLM-BoW (Dathathri et al. 2020): steer a Transformer towards a bag of words by perturbing its KV cache.

At every step t, with H the cached keys/values of x_<t (the past), x_{t-1} the last token and T the target ids:

    loss(dH) = -log sum_{w in T} p(w | x_{t-1}, H + dH)  +  kl_scale * KL(p(. | H + dH) || p_unperturbed)   (Eq. 3-4)
    repeated `iterations` times:  dH <- dH - step_size * g / |g|^gamma,  g = d loss / d dH restricted to the window
    p_next ~ p(. | x_{t-1}, H + dH)^gm * p_unperturbed^(1 - gm), renormalized after top-k                      (Sec. 3.4)

|g| is taken per layer (keys and values together) and per sample, as a running maximum over the whole generation
(PPLM's BoW setting). The perturbation stays in the past that later steps extend, as in PPLM; p_unperturbed comes
from a second, untouched cache, so nothing is recomputed from the prefix.

Decision: the window is the `window` most recent past positions (PPLM's released code masks the earliest ones);
window 0 perturbs the whole past.

Works with any Hugging Face causal LM whose cache is a DynamicCache of per-layer keys/values (GPT-2 family).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache

from ..checks import check_fields
from ..errors import BackpackError
from ..model.loading import max_positions
from .topic import Generation

SMALL = 1e-15  # PPLM's SMALL_CONST: keeps logs and norms finite


@dataclass
class PPLMSettings:
    """PPLM-BoW hyper-parameters (paper defaults except the window, 5 here)."""

    step_size: float = 0.02
    iterations: int = 3
    window: int = 5
    kl_scale: float = 0.01
    gm_scale: float = 0.9
    gamma: float = 1.5

    def __post_init__(self):
        check_fields(self, step_size="non_negative_float", iterations="non_negative_int", window="non_negative_int",
                     kl_scale="non_negative_float", gm_scale="unit_interval", gamma="non_negative_float")

    def to_dict(self) -> dict:
        return asdict(self)


def _cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(ddp_cache_data=layers)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]


def bow_log_mass(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """log sum_{w in T} p(w) per row: logits [b, V] -> [b]."""
    return torch.logsumexp(logits.float().log_softmax(-1)[:, target_ids], dim=-1)


def perturb_past(model, past, last: torch.Tensor, unperturbed_probs: torch.Tensor, target_ids: torch.Tensor,
                 settings: PPLMSettings, grad_norms: list[torch.Tensor] | None):
    """PPLM's inner loop. past: per layer (keys, values) [b, heads, t, d_head]; last [b, 1];
    unperturbed_probs [b, V]. Returns (perturbed past, updated running grad norms [layer][b])."""
    length = past[0][0].shape[2]
    window = torch.ones(1, 1, length, 1, device=last.device)
    if 0 < settings.window < length:
        window[:, :, : length - settings.window] = 0
    deltas = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in past]
    reference = unperturbed_probs + SMALL * (unperturbed_probs <= SMALL)
    for _ in range(settings.iterations):
        leaves = [(dk.clone().requires_grad_(True), dv.clone().requires_grad_(True)) for dk, dv in deltas]
        with torch.enable_grad():
            cache = _cache([(k + dk, v + dv) for (k, v), (dk, dv) in zip(past, leaves)])
            logits = model(last, cache=cache, use_cache=True).logits[:, -1].float()
            loss = -bow_log_mass(logits, target_ids)  # [b]
            if settings.kl_scale > 0:
                probs = logits.softmax(-1)
                probs = probs + SMALL * (probs <= SMALL).detach()
                loss = loss + settings.kl_scale * (probs * (probs / reference).log()).sum(-1)
            grads = torch.autograd.grad(loss.sum(), [t for pair in leaves for t in pair])
        norms = []
        for index in range(len(past)):
            gk, gv = grads[2 * index] * window, grads[2 * index + 1] * window
            norm = (gk.pow(2).sum((1, 2, 3)) + gv.pow(2).sum((1, 2, 3))).sqrt()  # [b]
            norms.append(norm + SMALL if grad_norms is None else torch.maximum(grad_norms[index], norm))
            scale = (settings.step_size / norms[-1] ** settings.gamma).view(-1, 1, 1, 1)
            dk, dv = deltas[index]
            deltas[index] = (dk - scale * gk, dv - scale * gv)
        grad_norms = norms
    return [(k + dk, v + dv) for (k, v), (dk, dv) in zip(past, deltas)], grad_norms


def _top_k_probs(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    if top_k and top_k < probs.shape[-1]:
        threshold = probs.topk(top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def require_transformer(model) -> None:
    """BackpackError for a Backpack: PPLM steers through a Transformer's key/value cache."""
    if getattr(model.config, "model_type", None) == "backpack":
        raise BackpackError("PPLM perturbs a Transformer's cache; for a Backpack use sense re-weighting")


@torch.no_grad()  # perturb_past enables gradients for its own inner loop only
def generate_pplm(model, prompt_ids: list[int], target_ids: list[int], max_new_tokens: int,
                  settings: PPLMSettings | None = None, num_samples: int = 1, temperature: float = 1.0,
                  top_k: int = 10, greedy: bool = False, seed: int = 0, keep_probs: bool = False) -> Generation:
    """Continue `prompt_ids` `num_samples` times with PPLM-BoW towards `target_ids` (step_size 0 = plain sampling).

    Generation.step_logits holds the log of the final (fused, filtered) next-token distribution [n, b, V] when
    keep_probs."""
    settings = settings or PPLMSettings()
    require_transformer(model)
    if not prompt_ids:
        raise BackpackError("the prompt has no tokens")
    if not target_ids:
        raise BackpackError("PPLM needs at least one target token")
    if temperature <= 0:
        raise BackpackError(f"temperature must be positive, not {temperature}")
    positions = max_positions(model)
    if positions and len(prompt_ids) + max_new_tokens > positions:
        raise BackpackError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed the model's {positions} positions")
    device = next(model.parameters()).device
    targets = torch.tensor(sorted(set(target_ids)), device=device)
    generator = torch.Generator(device=device).manual_seed(seed)

    started = time.perf_counter()
    tokens = torch.tensor([prompt_ids], device=device).expand(num_samples, -1)  # [b, t]
    unperturbed = DynamicCache()
    past = None  # the steered chain: per layer (keys, values) of x_<t, perturbations included
    if tokens.shape[1] > 1:
        model(tokens[:, :-1], cache=unperturbed, use_cache=True)
        past = _layers(unperturbed)
    grad_norms, kept = None, []
    for _ in range(max_new_tokens):
        last = tokens[:, -1:]
        unperturbed_logits = model(last, cache=unperturbed, use_cache=True).logits[:, -1].float()
        unperturbed_probs = unperturbed_logits.softmax(-1)
        if past is not None and settings.step_size > 0 and settings.iterations > 0:
            past, grad_norms = perturb_past(model, past, last, unperturbed_probs, targets, settings, grad_norms)
        steered = model(last, cache=_cache(past) if past else DynamicCache(), use_cache=True)
        past = _layers(steered.cache)
        probs = (steered.logits[:, -1].float() / temperature).softmax(-1)
        probs = probs ** settings.gm_scale * unperturbed_probs ** (1 - settings.gm_scale)
        probs = _top_k_probs(probs, top_k)
        if keep_probs:
            kept.append(probs.log().cpu())
        new = probs.argmax(-1, keepdim=True) if greedy else torch.multinomial(probs, 1, generator=generator)
        tokens = torch.cat([tokens, new], dim=1)
    return Generation(prompt_ids=list(prompt_ids), new_ids=tokens[:, len(prompt_ids):].tolist(),
                      seconds=time.perf_counter() - started, step_logits=torch.stack(kept) if keep_probs else None)
