"""Section 5 of the gist issue on the synthetic instruction world, trained here (one tiny model per condition, k = 1,
each fine-tuned from one base model trained here from scratch):

- gist-1 ROUGE-L on seen instructions is within 10 points of pos_control and at least 20 above neg_control;
- generating through the gist cache gives exactly the greedy outputs of the uncached gist-masked model;
- on instructions of 50+ tokens, gist caching reaches the first token with fewer FLOPs (batch 1 and 8) and less wall
  time (batch 8, min of 15, 20% margin) than no caching, and stores at least instruction_tokens / k times fewer
  key/value bytes than instruction caching.
"""

from __future__ import annotations

import time

import pytest
import torch

from backpacklm.gist.cache import compress, prefill_compressed, prefill_uncached
from backpacklm.gist.data import load_examples
from backpacklm.gist.evaluate import predict, rouge_l
from backpacklm.gist.layout import GistExample, build_gist_word_tokenizer, encode_example, encode_tail, gist_token_id
from backpacklm.gist.masks import CONDITIONS
from backpacklm.gist.savings import forward_flops
from backpacklm.gist.train import GistTrainConfig, train_gist
from backpacklm.model.loading import load_model
from backpacklm.worlds.instructions import InstructionWorldConfig, generate_instruction_world, write_instruction_world

# The one-symbol tasks (first, last, min, max, count): each answer needs both the instruction and the input. Their
# phrasings all have four words (and phrasing i the same characters), so with a word-level tokenizer every
# instruction has the same length: nothing after the gists, positions included, tells neg_control the task.
# Word-level prompts are ~20 tokens (a char-level one is ~70), and the task word is one token.
# Protocol (as Mu et al., who fine-tune a trained LM): one base model is trained here from scratch on the train split
# with the plain causal mask (pos_control's training), then each condition fine-tunes it with the same steps, data and
# seed. From scratch, gist-1 needs far longer than pos_control: the task reaches the answer only in two attention
# hops (instruction -> gist -> answer), and both hops must be learned before either helps the loss (measured, 4 layers,
# 1200 steps from scratch: gist-1 51.7, pos_control 100, neg_control 13.3).
WORLD = InstructionWorldConfig(
    seed=0, n_train=2000, n_eval=100, tasks=("first", "last", "min", "max", "count"), letters="abcdef", max_len=5,
    composite_fraction=0.0,
)
MODEL = dict(n_embd=32, n_layer=4, n_head=4, n_positions=128)  # the long split's prompts are ~90 tokens
BASE = dict(max_steps=1200, batch_size=32, lr=1e-2, warmup_steps=30, seed=0)
# Fine-tuning 1200 steps at 6e-3, not 600 at 3e-3: the gist mask has both hops to learn here, and at 600/3e-3 gist-1
# reached 74-99 over world/training seeds 0-3 against pos_control's 94-99 (more than 10 below it on seeds 1 and 2);
# 1200 at 3e-3 left it 1-10 points inside the bar. Measured at 1200/6e-3: see the quality test's docstring.
FINETUNE = dict(max_steps=1200, batch_size=32, lr=6e-3, warmup_steps=30, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths of the world's splits, and a word-level tokenizer covering all of them."""
    root = tmp_path_factory.mktemp("instruction_world")
    world = generate_instruction_world(WORLD)
    paths = write_instruction_world(world, root)
    examples = [GistExample(**record) for records in world.splits.values() for record in records]
    build_gist_word_tokenizer(examples).save_pretrained(root / "tokenizer")
    return {**paths, "tokenizer": root / "tokenizer"}


@pytest.fixture(scope="module")
def base(world, tmp_path_factory):
    """The shared base: a word-level Transformer trained from scratch with the plain causal mask and one gist token."""
    out = tmp_path_factory.mktemp("gist_base")
    train_gist(GistTrainConfig(
        data=str(world["train"]), out=str(out), arch="transformer", model_overrides=MODEL,
        tokenizer=str(world["tokenizer"]), gists=1, condition="pos_control", eval_interval=10**6, threads=1,
        progress=False, **BASE,
    ))
    return out / "model"


@pytest.fixture(scope="module")
def models(base, world, tmp_path_factory):
    """condition -> (model, tokenizer): the base fine-tuned with k = 1 under that condition's mask, on first use."""
    root, trained = tmp_path_factory.mktemp("gist_runs"), {}

    def get(condition: str):
        if condition not in trained:
            train_gist(GistTrainConfig(
                data=str(world["train"]), out=str(root / condition), init_from=str(base), gists=1,
                condition=condition, eval_interval=10**6, threads=1, progress=False, **FINETUNE,
            ))
            model, tokenizer = load_model(root / condition / "model")
            trained[condition] = (model.eval(), tokenizer)
        return trained[condition]

    return get


def test_gist_quality_matches_pos_control_and_beats_neg_control(models, world):
    """Measured here (Intel AVX-512), gist-1 / pos_control / neg_control with world and training seed s: s=0 (the
    test's) 100 / 100 / 27, s=1 97 / 99 / 28, s=2 99 / 100 / 29, s=3 97 / 100 / 36."""
    seen = load_examples(world["seen"])  # seen phrasings, (instruction, input) pairs never trained on
    references = [e.output for e in seen]
    scores = {c: rouge_l(predict(*models(c), seen, batch_size=50, max_new_tokens=4), references) for c in CONDITIONS}
    gist, pos, neg = scores["gist"], scores["pos_control"], scores["neg_control"]
    print(f"seen ROUGE-L: gist-1 {gist:.1f}, pos_control {pos:.1f}, neg_control {neg:.1f}")
    assert gist >= pos - 10, scores
    assert gist >= neg + 20, scores


def test_gist_cache_gives_the_uncached_greedy_outputs(models, world):
    model, tokenizer = models("gist")
    examples = load_examples(world["seen"]) + load_examples(world["long"])[:20]  # mixed instruction lengths
    cached = predict(model, tokenizer, examples, "gist", batch_size=16, max_new_tokens=8, cached=True)
    uncached = predict(model, tokenizer, examples, "gist", batch_size=16, max_new_tokens=8, cached=False)
    assert cached == uncached


def _min_seconds(fn, repeats: int = 15) -> float:
    """Minimum wall time over repeats: robust to a busy machine (noise only adds time)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_gist_cache_saves_first_token_time_and_memory_on_long_instructions(models, world):
    model, tokenizer = models("gist")
    examples = load_examples(world["long"])[:8]
    gist_id, eos, k = gist_token_id(tokenizer), tokenizer.eos_token_id, 1
    gists = compress(model, tokenizer, [e.instruction for e in examples], k)
    full = compress(model, tokenizer, [e.instruction for e in examples], k, keep="all")
    instruction_tokens = gists.instruction_tokens
    assert int(instruction_tokens.min()) >= 50
    # stored bytes per prompt: the gists' keys/values against the whole instruction prefix's
    assert torch.all(full.kv_bytes() / gists.kv_bytes() >= instruction_tokens / k)
    prompts = [encode_example(tokenizer, e, k, with_output=False).input_ids for e in examples]
    tails = [encode_tail(tokenizer, e) for e in examples]
    for rows in ([0], list(range(8))):  # batch 1 and batch 8
        uncached_flops = sum(forward_flops(model, len(prompts[i]), 0) for i in rows)
        cached_flops = sum(forward_flops(model, len(tails[i]), k) for i in rows)
        assert cached_flops < 0.5 * uncached_flops
        no_cache = _min_seconds(lambda: prefill_uncached(model, [prompts[i] for i in rows], gist_id, "gist", eos)
                                .logits[:, -1].argmax(-1))
        gist_cache = _min_seconds(lambda: prefill_compressed(model, gists.select(rows), [tails[i] for i in rows], eos)
                                  .logits[:, -1].argmax(-1))
        print(f"batch {len(rows)}: time to first token {1000 * no_cache:.2f} ms uncached, "
              f"{1000 * gist_cache:.2f} ms from the gist cache; FLOPs {uncached_flops:.3g} vs {cached_flops:.3g}")
        if len(rows) > 1:  # at batch 1 a tiny model's prefill is mostly Python overhead (measured 6.3 vs 6.5 ms)
            assert gist_cache < 0.8 * no_cache
