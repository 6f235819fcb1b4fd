"""T5 gist tokens: who attends to whom (encoder self-attention, decoder cross-attention; eager and sdpa), and
generation from compressed prompts (through the shared `gist.cache` entry points) equal to the uncached gist-masked
model (float32, batch 1 and 4, greedy and sampled)."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from backpacklm.errors import BackpackError
from backpacklm.gist.cache import (SamplingConfig, compress_ids, decode, generate_from_compressed, load_compressed,
                                   prefill_compressed, prefill_uncached)
from backpacklm.gist.layout import GistExample, build_gist_char_tokenizer, gist_token_id
from backpacklm.gist.masks import to_additive
from backpacklm.gist.t5 import (
    t5_allowed_attention,
    t5_collate,
    t5_encode_example,
    t5_encode_from_compressed,
    t5_encode_segment,
    t5_gist_encode,
    t5_gist_forward,
)

EXAMPLES = [
    GistExample("Reverse the letters.", "a b c", "c b a"),
    GistExample("Sort the letters, then count them: it is a long instruction.", "c a", "2"),
    GistExample("Say x.", "", "x"),
    GistExample("Take every second letter.", "a b c d e f", "a c e"),
]
IMPLEMENTATIONS = ["eager", "sdpa"]
# who may attend to whom, by segment: I instruction, G gists, X input segment (input + eos)
EXPECTED_ENCODER = {
    "gist": {"I": "IG", "G": "IG", "X": "GX"},
    "pos_control": {"I": "IGX", "G": "IGX", "X": "IGX"},
    "neg_control": {"I": "IG", "G": "IG", "X": "X"},
}
EXPECTED_CROSS = {"gist": "GX", "pos_control": "IGX", "neg_control": "X"}


@pytest.fixture(scope="module")
def tokenizer():
    return build_gist_char_tokenizer(EXAMPLES)


def tiny_t5(tokenizer, implementation: str, layers: int = 2, seed: int = 0) -> T5ForConditionalGeneration:
    eos = tokenizer.eos_token_id
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=layers, num_decoder_layers=layers,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        pad_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
    )
    config._attn_implementation = implementation
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config).eval()


def segments(encoded, width: int) -> list[str]:
    """Segment letter per source position: I, G, X, or P (padding)."""
    labels = []
    for e in encoded:
        n_instr = sum(1 for t in e.prefix if t != e.prefix[-1])
        row = "I" * n_instr + "G" * (len(e.prefix) - n_instr) + "X" * len(e.segment)
        labels.append(row + "P" * (width - len(row)))
    return labels


@pytest.mark.parametrize("condition", ["gist", "pos_control", "neg_control"])
def test_allowed_attention_by_segment(tokenizer, condition):
    gist_id = gist_token_id(tokenizer)
    encoded = [t5_encode_example(tokenizer, e, k) for e, k in zip(EXAMPLES, [1, 2, 5, 2])]
    batch = t5_collate(encoded, tokenizer.eos_token_id)
    encoder, cross = t5_allowed_attention(batch.input_ids, gist_id, condition, batch.padding_mask)
    for b, labels in enumerate(segments(encoded, batch.input_ids.shape[1])):
        for i, qi in enumerate(labels):
            for j, kj in enumerate(labels):
                if qi != "P":
                    assert bool(encoder[b, 0, i, j]) == (kj in EXPECTED_ENCODER[condition][qi]), (b, qi, kj)
                elif kj == "P":
                    assert not encoder[b, 0, i, j]  # padding is never a key
        for j, kj in enumerate(labels):
            assert bool(cross[b, j]) == (kj in EXPECTED_CROSS[condition])
    no_gists = torch.tensor([[5, 6, 7]])
    encoder, cross = t5_allowed_attention(no_gists, gist_id, condition)
    assert encoder.all() and cross.all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("condition", ["gist", "pos_control", "neg_control"])
def test_model_attends_exactly_where_allowed(tokenizer, implementation, condition):
    """With one encoder and one decoder layer, output i depends on input j iff i may attend to j: read the
    dependence off the gradients (works for sdpa too, which returns no attention weights)."""
    model = tiny_t5(tokenizer, implementation, layers=1)
    gist_id = gist_token_id(tokenizer)
    encoded = [t5_encode_example(tokenizer, e, 2) for e in EXAMPLES[:2]]
    batch = t5_collate(encoded, tokenizer.eos_token_id)
    allowed, cross = t5_allowed_attention(batch.input_ids, gist_id, condition, batch.padding_mask)
    embeds = model.encoder.embed_tokens(batch.input_ids).detach().requires_grad_(True)
    out = model.encoder(inputs_embeds=embeds, attention_mask=to_additive(allowed)).last_hidden_state
    n = batch.input_ids.shape[1]
    for b in range(2):
        for i in range(n):
            if not batch.padding_mask[b, i]:
                continue
            (grad,) = torch.autograd.grad(out[b, i].sum(), embeds, retain_graph=True)
            depends = grad[b].abs().sum(-1) > 0
            assert torch.equal(depends, allowed[b, 0, i]), (b, i)
    hidden = torch.randn(2, n, model.config.d_model, requires_grad=True)
    decoder_ids = torch.full((2, 3), tokenizer.eos_token_id)
    logits = model(encoder_outputs=BaseModelOutput(hidden), attention_mask=cross.long(),
                   decoder_input_ids=decoder_ids).logits
    (grad,) = torch.autograd.grad(logits.sum(), hidden)
    assert torch.equal(grad.abs().sum(-1) > 0, cross)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rows", [[0], [0, 1, 2, 3], [1]])
def test_compressed_equals_uncached(tokenizer, implementation, rows):
    model = tiny_t5(tokenizer, implementation)
    gist_id, eos = gist_token_id(tokenizer), tokenizer.eos_token_id
    encoded = [t5_encode_example(tokenizer, EXAMPLES[r], 3) for r in rows]
    batch = t5_collate(encoded, eos)
    with torch.no_grad():
        uncached = t5_gist_forward(model, batch, gist_id)
        prompt = compress_ids(model, [e.prefix for e in encoded], gist_id)
        outputs, cross = t5_encode_from_compressed(model, prompt, [e.segment for e in encoded], eos)
        cached = model(encoder_outputs=outputs, attention_mask=cross, labels=batch.labels)
    assert (cached.logits - uncached.logits).abs().max() < 1e-5
    assert abs(cached.loss.item() - uncached.loss.item()) < 1e-5
    full, _ = t5_gist_encode(model, batch.input_ids, batch.padding_mask, gist_id)
    for b, e in enumerate(encoded):  # encoder states of gists + input segment, position by position
        start, stop = len(e.prefix) - 3, len(e.source)
        got = outputs.last_hidden_state[b, : stop - start][cross[b, : stop - start].bool()]
        assert (got - full.last_hidden_state[b, start:stop]).abs().max() < 1e-5
    assert len(prompt.layers) == 2 and prompt.layers[0][0].shape == (len(rows), 4, 3, 8)
    assert prompt.encoder_hidden.shape == (len(rows), 3, 32)
    # generation: the shared prefill/decode entry points, uncached vs compressed, greedy (also = HF generate) and sampled
    sources, tails = [e.source for e in encoded], [e.segment for e in encoded]
    generated = {}
    for sampling in (SamplingConfig(max_new_tokens=8), SamplingConfig(8, do_sample=True, top_k=20, seed=3)):
        uncached_ids = decode(model, prefill_uncached(model, sources, gist_id, "gist", eos), eos, sampling)
        cached_ids = decode(model, prefill_compressed(model, prompt, tails, eos), eos, sampling)
        assert cached_ids == uncached_ids and all(len(r) > 0 for r in cached_ids)
        generated[sampling.do_sample] = cached_ids
    with torch.no_grad():  # our greedy decoding loop = Hugging Face generate on the same encoder outputs
        hf = model.generate(encoder_outputs=outputs, attention_mask=cross, max_new_tokens=8, do_sample=False,
                            top_k=None)[:, 1:]
    assert all(row[:len(ids)] == ids for row, ids in zip(hf.tolist(), generated[False]))
    # and the test can fail: the instruction matters under gist, and the plain model differs from the gist mask
    changed = [t5_encode_example(tokenizer, GistExample("Count them.", EXAMPLES[r].input, ""), 3) for r in rows]
    with torch.no_grad():
        other = compress_ids(model, [e.prefix for e in changed], gist_id)
        other_out, _ = t5_encode_from_compressed(model, other, [e.segment for e in encoded], eos)
        assert (model(encoder_outputs=other_out, attention_mask=cross, labels=batch.labels).logits
                - cached.logits).abs().max() > 1e-3
        assert (t5_gist_forward(model, batch, gist_id, "pos_control").logits - uncached.logits).abs().max() > 1e-3


def test_instruction_cache_equals_its_uncached_mask(tokenizer):
    """keep="all" (the savings baseline: the whole prefix stored, left-padded across mixed lengths, the input reads
    all of it) equals the uncached encoder whose input segment sees instruction, gists and input."""
    model = tiny_t5(tokenizer, "eager")
    gist_id, eos = gist_token_id(tokenizer), tokenizer.eos_token_id
    encoded = [t5_encode_example(tokenizer, e, 2) for e in EXAMPLES]
    batch = t5_collate(encoded, eos)
    labels = segments(encoded, batch.input_ids.shape[1])
    allowed = torch.tensor([[[kj != "P" and (qi == "X" or kj != "X") for kj in row] for qi in row] for row in labels])
    with torch.no_grad():
        full = compress_ids(model, [e.prefix for e in encoded], gist_id, keep="all", batch_size=3)
        outputs, cross = t5_encode_from_compressed(model, full, [e.segment for e in encoded], eos)
        cached = model(encoder_outputs=outputs, attention_mask=cross, labels=batch.labels).logits
        plain = model.encoder(input_ids=batch.input_ids, attention_mask=to_additive(allowed.unsqueeze(1)))
        uncached = model(encoder_outputs=plain, attention_mask=batch.padding_mask.long(), labels=batch.labels).logits
    assert (cached - uncached).abs().max() < 1e-5
    assert full.stored_positions.tolist() == [len(e.prefix) for e in encoded]


def test_compressed_prompts_select_concatenate_save(tokenizer, tmp_path):
    model = tiny_t5(tokenizer, "sdpa")
    gist_id = gist_token_id(tokenizer)
    prefixes = [t5_encode_example(tokenizer, e, 2).prefix for e in EXAMPLES]
    together = compress_ids(model, prefixes, gist_id)
    alone = compress_ids(model, prefixes, gist_id, batch_size=1)
    pairs = [(a, b) for (ka, va), (kb, vb) in zip(together.layers, alone.layers) for a, b in ((ka, kb), (va, vb))]
    for a, b in pairs + [(together.encoder_hidden, alone.encoder_hidden)]:
        assert (a - b).abs().max() < 1e-5
    assert torch.equal(together.select([2]).encoder_hidden, together.encoder_hidden[2:3])
    # float32 per prompt: k=2 positions x (K and V of 4 heads x 8 in 2 layers + the 32-wide encoder output)
    assert together.kv_bytes().tolist() == [2 * 4 * (2 * 2 * 4 * 8 + 32)] * 4
    together.save(tmp_path / "c.safetensors")
    loaded = load_compressed(tmp_path / "c.safetensors", model)
    assert torch.equal(loaded.encoder_hidden, together.encoder_hidden) and loaded.instructions == together.instructions
    ids = generate_from_compressed(model, tokenizer, loaded, ["a b"] * 4, SamplingConfig(max_new_tokens=4))
    assert ids == generate_from_compressed(model, tokenizer, together, ["a b"] * 4, SamplingConfig(max_new_tokens=4))
    with pytest.raises(BackpackError, match="compressed by another model"):
        load_compressed(tmp_path / "c.safetensors", tiny_t5(tokenizer, "sdpa", seed=1))


def test_bad_prompts_are_one_line_errors(tokenizer):
    model = tiny_t5(tokenizer, "eager")
    gist_id = gist_token_id(tokenizer)
    plain = t5_encode_example(tokenizer, EXAMPLES[0], 0).prefix
    with pytest.raises(BackpackError, match="has no <GIST> token"):
        compress_ids(model, [plain], gist_id)
    one, two = (t5_encode_example(tokenizer, EXAMPLES[0], k).prefix for k in (1, 2))
    with pytest.raises(BackpackError, match="different numbers of gist tokens"):
        compress_ids(model, [one, two], gist_id)
    with pytest.raises(BackpackError, match="unknown gist condition"):
        t5_allowed_attention(torch.tensor([[1, 2]]), gist_id, "both")
    for field in ("instruction", "input", "output"):  # a literal "<GIST>" would be read as a gist token
        example = GistExample(**{**vars(EXAMPLES[0]), field: "a <GIST> b"})
        with pytest.raises(BackpackError, match=f"{field} 'a <GIST> b' contains <GIST>, which is reserved"):
            t5_encode_example(tokenizer, example, 2)
    with pytest.raises(BackpackError, match="input 'a <GIST> b' contains <GIST>"):
        t5_encode_segment(tokenizer, "a <GIST> b")
