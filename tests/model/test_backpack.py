"""The Backpack model: sizes, equations, cache, interventions, Hugging Face round trip."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from backpacklm.model.transformer import build_model, transformer_config
from backpacklm import BackpackConfig, BackpackError, BackpackForCausalLM


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = BackpackConfig.from_preset("tiny", vocab_size=50, n_embd=32, n_layer=2, n_head=2, num_senses=4,
                                        n_positions=64, **overrides)
    return BackpackForCausalLM(config).eval()


@pytest.mark.parametrize("preset,total,trunk", [
    ("micro", 41_659_776, 30_145_536), ("mini", 103_856_000, 71_886_080), ("small", 170_083_584, 124_051_968),
])
def test_published_parameter_counts(preset, total, trunk):
    with torch.device("meta"):
        model = BackpackForCausalLM(BackpackConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.transformer.parameters()) == trunk
    gpt2 = transformer_config(model.config)
    with torch.device("meta"):
        baseline = build_model(model.config, "transformer")
    assert gpt2.scale_attn_by_inverse_layer_idx and sum(p.numel() for p in baseline.parameters()) == trunk
    assert (model.config.parameter_count(), model.config.parameter_count("transformer")) == (total, trunk)


def test_a_model_larger_than_memory_is_refused_before_it_is_built():
    from backpacklm.model.config import check_fits_in_memory

    huge = BackpackConfig.from_preset("tiny", n_layer=10**9)  # building it on meta alone took minutes
    with pytest.raises(BackpackError, match=r"a model of [\d,]+ parameters needs [\d.]+ GiB for its float32 weights"):
        build_model(huge)
    check_fits_in_memory(BackpackConfig.from_preset("micro"))  # 0.16 GiB: fits


def reference_forward(model, input_ids):
    """The Backpack equations written out position by position, alpha materialized (no dedup, no fusion)."""
    c = model.config
    d, k = c.n_embd, c.num_senses
    E = model.transformer.wte.weight
    h = model.transformer(input_ids).last_hidden_state
    sn = model.sense_network
    r0 = E[input_ids]
    r1 = r0 + sn.ln_a(r0)
    gelu = lambda z: torch.nn.functional.gelu(z, approximate="tanh")
    r2 = r1 + sn.mlp.c_proj(gelu(sn.mlp.c_fc(sn.ln_b(r1))))
    senses = sn.final_mlp.c_proj(gelu(sn.final_mlp.c_fc(sn.ln_c(r2)))).view(*input_ids.shape, k, d)
    qk = model.sense_weights.c_attn(h)
    q, kk = qk[..., :d].view(*input_ids.shape, k, d // k), qk[..., d:].view(*input_ids.shape, k, d // k)
    T = input_ids.shape[1]
    scores = torch.einsum("bilh,bjlh->blij", q, kk) / (d // k) ** 0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    alpha = scores.softmax(-1)
    o = torch.einsum("blij,bjld->bid", alpha, senses)
    return o @ E.T, alpha, senses


def test_fused_mixing_equals_explicit_alpha_and_reference():
    model = small_model()
    x = torch.randint(0, 50, (3, 20))
    with torch.no_grad():
        fused = model(x)
        explicit = model(x, output_contextualization=True, output_senses=True)
        ref_logits, ref_alpha, ref_senses = reference_forward(model, x)
    assert explicit.contextualization.shape == (3, 4, 20, 20) and explicit.senses.shape == (3, 20, 4, 32)
    assert fused.contextualization is None
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit.contextualization, ref_alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(explicit.senses, ref_senses, atol=1e-6, rtol=0)
    assert torch.allclose(explicit.contextualization.sum(-1), torch.ones(3, 4, 20))


def test_cached_decoding_equals_full_forward():
    model = small_model()
    x = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :7], use_cache=True)
        steps = [out.logits]
        for t in range(7, 30):
            cache = {"past_key_values" if t % 2 else "cache": out.cache}  # the pre-5.24 name works alike
            out = model(x[:, t:t + 1], use_cache=True, **cache)
            steps.append(out.logits)
    assert len(out.cache.layers) == model.config.n_layer + 1  # trunk layers + the sense layer
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_generate_uses_cache_and_matches_greedy_recomputation():
    model = small_model()
    prompt = torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=15, do_sample=False)
        seq = prompt
        for _ in range(15):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, seq)


def test_left_padded_batch_generation_matches_single():
    model = small_model()
    a, b = torch.randint(0, 50, (1, 8)), torch.randint(0, 50, (1, 4))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        alone = model.generate(b, max_new_tokens=6, do_sample=False)
    assert torch.equal(together[1, 4:], alone[0])


def test_interventions_in_forward_and_cache():
    model = small_model()
    x = torch.randint(0, 50, (2, 16))
    x[:, 3] = 7
    multipliers = torch.rand(2, 16, 4)
    override = {7: torch.randn(4, 32)}
    with torch.no_grad():
        plain = model(x).logits
        fused = model(x, sense_multipliers=multipliers, sense_overrides=override)
        explicit = model(x, sense_multipliers=multipliers, sense_overrides=override, output_contextualization=True,
                         output_senses=True)
        out = model(x[:, :5], use_cache=True, sense_multipliers=multipliers, sense_overrides=override)
        steps = [out.logits]
        for t in range(5, 16):
            out = model(x[:, t:t + 1], cache=out.cache, use_cache=True,
                        sense_multipliers=multipliers, sense_overrides=override)
            steps.append(out.logits)
    assert (fused.logits - plain).abs().max() > 1e-2  # the intervention changes the output
    torch.testing.assert_close(explicit.senses[:, 3], override[7].expand(2, 4, 32))
    torch.testing.assert_close(fused.logits, explicit.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(steps, 1), fused.logits, atol=1e-5, rtol=0)
    # zeroing every multiplier of one key position removes exactly that position's senses from the mixture
    zero = torch.ones(2, 16, 4)
    zero[:, 0] = 0
    alpha = model(x, sense_multipliers=zero, output_contextualization=True).contextualization
    assert alpha[:, :, :, 0].abs().max() == 0


def test_save_load_round_trip_through_auto_model(tmp_path):
    model = small_model()
    model.save_pretrained(tmp_path)
    config_text = (tmp_path / "config.json").read_text()
    assert '"model_type": "backpack"' in config_text and "auto_map" not in config_text
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code
    assert type(loaded) is BackpackForCausalLM
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_init_scheme():
    torch.manual_seed(0)
    model = BackpackForCausalLM(BackpackConfig.from_preset("tiny", n_embd=256, n_layer=8, n_head=4, vocab_size=4000))
    std = lambda p: p.detach().std().item()
    assert abs(std(model.transformer.wte.weight) - 0.02) < 1e-3
    assert abs(std(model.sense_network.final_mlp.c_fc.weight) - 0.02) < 1e-3
    scaled = 0.02 / (2 * 8) ** 0.5
    for p in (model.sense_network.mlp.c_proj.weight, model.sense_network.final_mlp.c_proj.weight,
              model.transformer.h[3].attn.c_proj.weight, model.transformer.h[3].mlp.c_proj.weight):
        assert abs(std(p) - scaled) < 0.1 * scaled
    assert model.sense_weights.c_attn.bias.abs().max() == 0 and model.sense_network.ln_c.weight.eq(1).all()


def test_bad_token_ids_and_lengths_are_clear_errors():
    model = small_model()
    with pytest.raises(BackpackError, match="out of range"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(BackpackError, match="positions"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(BackpackError, match="divisible"):
        BackpackConfig.from_preset("tiny", n_embd=30)
    with pytest.raises(BackpackError, match="unknown preset"):
        BackpackConfig.from_preset("huge")


def test_finite_weight_check_names_the_weight_and_skips_offloaded_ones():
    from backpacklm.model.loading import check_finite

    model = small_model()
    check_finite(model, "m")
    check_finite(torch.nn.Linear(3, 3, device="meta"), "m")  # device_map offload: no values to check
    with torch.no_grad():
        model.sense_network.final_mlp.c_proj.weight[0, 0] = float("inf")
    with pytest.raises(BackpackError, match="NaN or infinite weights \\(sense_network.final_mlp.c_proj.weight\\)"):
        check_finite(model, "m")
