"""Gist caching is exact: logits after compressed prompts equal the uncached gist-masked forward (float32, 1e-5) for
our Backpack, our Transformer, HF GPT-2 and a tiny Llama (GQA, rotary), one prompt at a time and batched with mixed
instruction lengths; greedy generation gives the same tokens; files round-trip and reject foreign models."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from backpacklm.errors import BackpackError
from backpacklm.gist.cache import (
    SamplingConfig, compress, compress_texts, decode, generate_from_compressed, load_compressed, prefill_compressed,
    prefill_uncached,
)
from backpacklm.gist.data import collate
from backpacklm.gist.layout import GistExample, build_gist_char_tokenizer, encode_example, gist_token_id
from backpacklm.model.config import BackpackConfig
from backpacklm.model.transformer import build_model

K = 2
EXAMPLES = [
    GistExample("reverse the letters", "a b c", "c b a"),
    GistExample("sort", "d a c", "a c d"),
    GistExample("write every second letter of the sequence, please", "a b c d e f", "a c e"),
    GistExample("count the letters", "", "3"),
]
TOKENIZER = build_gist_char_tokenizer(EXAMPLES)
V = len(TOKENIZER)


def make(family: str):
    torch.manual_seed(0)
    if family in ("backpack", "transformer"):
        config = BackpackConfig.from_preset("tiny", n_embd=32, n_layer=2, n_head=2, num_senses=4, vocab_size=V,
                                            n_positions=128, initializer_range=0.2)
        model = build_model(config, family)
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=128,
                                           bos_token_id=0, eos_token_id=0, initializer_range=0.2))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
                                             max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                                             pad_token_id=0, initializer_range=0.2))
    model.config.num_gists = K  # initializer_range 0.2: logits of order 1, so that 1e-5 is a tight tolerance
    return model.eval()


FAMILIES = ["backpack", "transformer", "gpt2", "llama"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return make(request.param)


def uncached_tail_logits(model, examples):
    """Per example, the logits of every token after the gists, from the uncached gist-masked forward."""
    encoded = [encode_example(TOKENIZER, e, K) for e in examples]
    batch = collate(encoded, TOKENIZER.eos_token_id, gist_token_id(TOKENIZER), "gist")
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    return [logits[b, -(len(e.input_ids) - e.gist_end):] for b, e in enumerate(encoded)]


def cached_tail_logits(model, examples):
    encoded = [encode_example(TOKENIZER, e, K) for e in examples]
    compressed = compress(model, TOKENIZER, [e.instruction for e in examples])
    state = prefill_compressed(model, compressed, [e.input_ids[e.gist_end:] for e in encoded], TOKENIZER.eos_token_id)
    return [state.logits[b, -(len(e.input_ids) - e.gist_end):] for b, e in enumerate(encoded)]


def test_cached_equals_uncached_batch_1_and_4(model):
    singles = [uncached_tail_logits(model, [e])[0] for e in EXAMPLES]
    cached_singles = [cached_tail_logits(model, [e])[0] for e in EXAMPLES]
    batched, cached_batched = uncached_tail_logits(model, EXAMPLES), cached_tail_logits(model, EXAMPLES)
    assert min(float(r.std()) for r in singles) > 0.1
    for reference, *others in zip(singles, cached_singles, batched, cached_batched):
        for other in others:
            assert other.shape == reference.shape
            assert (other - reference).abs().max() < 1e-5
    # the gists matter: without them (neg_control-like) the logits differ
    assert (singles[0] - uncached_tail_logits(model, [GistExample("sort", "a b c", "c b a")])[0]).abs().max() > 1e-2


def test_greedy_generation_cached_equals_uncached(model):
    eos = TOKENIZER.eos_token_id
    sampling = SamplingConfig(max_new_tokens=6)
    prompts = [encode_example(TOKENIZER, e, K, with_output=False).input_ids for e in EXAMPLES]
    uncached = decode(model, prefill_uncached(model, prompts, gist_token_id(TOKENIZER), "gist", eos), eos, sampling)
    compressed = compress(model, TOKENIZER, [e.instruction for e in EXAMPLES])
    cached = generate_from_compressed(model, TOKENIZER, compressed, [e.input for e in EXAMPLES], sampling)
    assert cached == uncached and all(len(row) >= 1 for row in cached)
    sampled = generate_from_compressed(model, TOKENIZER, compressed, [e.input for e in EXAMPLES],
                                       SamplingConfig(max_new_tokens=6, do_sample=True, seed=3))
    again = generate_from_compressed(model, TOKENIZER, compressed, [e.input for e in EXAMPLES],
                                     SamplingConfig(max_new_tokens=6, do_sample=True, seed=3))
    assert sampled == again


def test_a_sampled_example_does_not_depend_on_its_batch(model):
    """Each row draws from its own (seed, row index) stream: generating the four examples in one batch, or one at a
    time with their run index, gives the same samples (greedy would pass trivially, so sample with temperature 2)."""
    compressed = compress(model, TOKENIZER, [e.instruction for e in EXAMPLES])
    inputs = [e.input for e in EXAMPLES]
    sampling = SamplingConfig(max_new_tokens=6, do_sample=True, temperature=2.0, seed=5)
    together = generate_from_compressed(model, TOKENIZER, compressed, inputs, sampling)
    alone = [generate_from_compressed(model, TOKENIZER, compressed.select([i]), [inputs[i]], sampling, first_row=i)[0]
             for i in range(len(EXAMPLES))]
    assert together == alone
    shifted = generate_from_compressed(model, TOKENIZER, compressed.select([1]), [inputs[1]], sampling)[0]
    other_seed = generate_from_compressed(model, TOKENIZER, compressed, inputs, SamplingConfig(6, True, 2.0, 0, 6))
    assert shifted != together[1] and other_seed != together  # the stream does depend on the row and the seed


def test_file_round_trip_select_and_foreign_model(tmp_path):
    model = make("backpack")
    compressed = compress(model, TOKENIZER, [e.instruction for e in EXAMPLES])
    assert compressed.stored_positions.tolist() == [K] * 4
    path = compressed.save(tmp_path / "prompts.safetensors")
    loaded = load_compressed(path, model)
    assert loaded.instructions == [e.instruction for e in EXAMPLES]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(loaded.layers, compressed.layers))
    picked = loaded.select([2, 0])
    assert picked.instructions == [EXAMPLES[2].instruction, EXAMPLES[0].instruction]
    assert generate_from_compressed(model, TOKENIZER, picked, ["a b c d e f", "a b c"]) == \
        generate_from_compressed(model, TOKENIZER, compressed, [e.input for e in EXAMPLES])[::2][::-1]
    other = make("backpack")
    with torch.no_grad():
        other.transformer.wte.weight[0] += 1.0
    with pytest.raises(BackpackError, match="another model"):
        load_compressed(path, other)
    with pytest.raises(BackpackError, match="no <GIST> token"):
        compress_texts(model, TOKENIZER, ["Instruction: sort\n"])
    # instruction caching keeps the whole prefix: left-padded for mixed lengths, same logits as no caching
    full = compress(model, TOKENIZER, [e.instruction for e in EXAMPLES], keep="all")
    assert full.stored_positions.tolist() == [len(TOKENIZER.encode(f"Instruction: {e.instruction}\n")) + K
                                              for e in EXAMPLES]
    assert (full.kv_bytes() / compressed.kv_bytes()).min() > 5
    texts = compress_texts(model, TOKENIZER, [f"Instruction: {e.instruction}\n" + "<GIST>" * K for e in EXAMPLES],
                           keep="all")  # the same prompts as raw text: the same stored prefixes
    assert texts.keep == "all" and texts.stored_positions.tolist() == full.stored_positions.tolist()
    assert all(torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
               for a, b in zip(texts.layers, full.layers))


@pytest.mark.parametrize("tamper, message", [
    (lambda t, h: t.pop("layer.1.values"), "no tensor 'layer.1.values'"),
    (lambda t, h: t.update({"layer.0.keys": t["layer.0.keys"][..., :3].contiguous()}), "keys and values differ"),
    (lambda t, h: h.update(instructions=h["instructions"][:1]), "1 instructions for 4 prompts"),
    (lambda t, h: h.pop("n_layers"), "header field 'n_layers' missing"),
    (lambda t, h: h.update(keep="weird"), "keep 'weird'"),
    (lambda t, h: t.update(next_position=t["next_position"][:2]), "'next_position' has shape [2], expected [4]"),
], ids=["tensor", "shape", "instructions", "header", "keep", "positions"])
def test_a_tampered_file_is_named_not_a_crash(tmp_path, tamper, message):
    import json
    import re

    from safetensors import safe_open
    from safetensors.torch import save_file

    model = make("backpack")
    path = compress(model, TOKENIZER, [e.instruction for e in EXAMPLES]).save(tmp_path / "prompts.safetensors")
    with safe_open(path, framework="pt") as f:
        tensors, header = {name: f.get_tensor(name) for name in f.keys()}, json.loads(f.metadata()["gist"])
    tamper(tensors, header)
    save_file(tensors, path, metadata={"gist": json.dumps(header)})
    with pytest.raises(BackpackError, match=f"not a usable compressed-prompt file .*{re.escape(message)}"):
        load_compressed(path, model)


def test_instruction_cache_of_mixed_lengths_near_the_position_limit():
    """Each row fits the Backpack's 90 positions, though the padded cache plus tails is wider (65 + 57 > 90): the
    explicit position ids are what is checked, and the result equals the uncached forward."""
    torch.manual_seed(0)
    config = BackpackConfig.from_preset("tiny", n_embd=32, n_layer=2, n_head=2, num_senses=4, vocab_size=V,
                                        n_positions=90, initializer_range=0.2)
    model = build_model(config, "backpack").eval()
    examples = [GistExample("sort", "a b c d e f " * 3 + "a b c", ""),
                GistExample("write every second letter of the sequence, please", "a b", "")]
    prompts = [encode_example(TOKENIZER, e, K, with_output=False).input_ids for e in examples]
    assert [len(p) for p in prompts] == [77, 84]
    full = compress(model, TOKENIZER, [e.instruction for e in examples], K, keep="all")
    tails = [encode_example(TOKENIZER, e, K, with_output=False) for e in examples]
    cached = prefill_compressed(model, full, [t.input_ids[t.gist_end:] for t in tails], TOKENIZER.eos_token_id)
    uncached = prefill_uncached(model, prompts, None, "pos_control", TOKENIZER.eos_token_id)
    assert (full.valid.shape[1], cached.logits.shape[1]) == (65, 57)
    assert (cached.logits[:, -1] - uncached.logits[:, -1]).abs().max() < 1e-5
    with pytest.raises(BackpackError, match="position id 90 is out of range for the model's 90 positions"):
        model(input_ids=torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[89, 90]]))


def test_prefills_with_logits_to_keep_1_run_the_lm_head_once(model):
    """logits_to_keep=1 gives the last position's logits (all that decoding needs), equal to the full prefill's, and
    saves the LM head's 2 d V FLOPs at every other position."""
    from torch.utils.flop_counter import FlopCounterMode

    eos, gist_id = TOKENIZER.eos_token_id, gist_token_id(TOKENIZER)
    encoded = [encode_example(TOKENIZER, e, K, with_output=False) for e in EXAMPLES]
    prompts, tails = [e.input_ids for e in encoded], [e.input_ids[e.gist_end:] for e in encoded]
    compressed = compress(model, TOKENIZER, [e.instruction for e in EXAMPLES])
    d = model.get_input_embeddings().weight.shape[1]
    for run in (lambda keep: prefill_uncached(model, prompts, gist_id, "gist", eos, logits_to_keep=keep),
                lambda keep: prefill_compressed(model, compressed, tails, eos, logits_to_keep=keep)):
        counted = {}
        for keep in (0, 1):
            with FlopCounterMode(display=False) as counter:
                counted[keep] = (run(keep), counter.get_total_flops())
        (full, all_flops), (last, last_flops) = counted[0], counted[1]
        assert last.logits.shape == (len(EXAMPLES), 1, V) and full.logits.shape[1] > 1
        assert (last.logits[:, 0] - full.logits[:, -1]).abs().max() < 1e-5
        saved = all_flops - last_flops
        assert saved == 2 * d * V * len(EXAMPLES) * (full.logits.shape[1] - 1)


def test_measure_savings_times_prefills_of_the_last_logits(monkeypatch):
    """The timed prefills compute what the FLOP count assumes: the LM head at the last position only."""
    import backpacklm.gist.savings as savings

    widths = []
    for name in ("prefill_uncached", "prefill_compressed"):
        def spy(*args, real=getattr(savings, name), **kwargs):
            state = real(*args, **kwargs)
            widths.append(state.logits.shape[1])
            return state
        monkeypatch.setattr(savings, name, spy)
    savings.measure_savings(make("gpt2"), TOKENIZER, EXAMPLES, batch_sizes=(2,), new_tokens=2, repeats=1)
    assert len(widths) >= 9 and set(widths) == {1}
