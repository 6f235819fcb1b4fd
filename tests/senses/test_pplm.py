"""PPLM-BoW on a Hugging Face GPT-2 (tiny, random, saved and loaded back): exactness at step 0, steering, window,
the side-by-side comparison and MAUVE on computed features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backpacklm.errors import BackpackError
from backpacklm.model.loading import load_model
from backpacklm.senses.pplm import PPLMSettings, generate_pplm, perturb_past
from backpacklm.senses.steering_metrics import mauve_score, text_features
from backpacklm.senses.topic import make_topic
from tests.helpers import run_cli
from tests.senses.steer_fixtures import TOPIC_WORDS, save, tiny_backpack, tiny_gpt2, tiny_tokenizer, write_topic


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pplm")
    tokenizer = tiny_tokenizer(tmp)
    gpt2_dir = save(tiny_gpt2(len(tokenizer)), tokenizer, tmp / "gpt2")
    backpack_dir = save(tiny_backpack(len(tokenizer)), tokenizer, tmp / "backpack")
    model, loaded_tokenizer = load_model(gpt2_dir)
    assert model.config.model_type == "gpt2" and loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    topic = make_topic(loaded_tokenizer, TOPIC_WORDS, model.config.vocab_size, "royal")
    return model, loaded_tokenizer, topic, gpt2_dir, backpack_dir, tmp


def test_step_zero_is_plain_sampling(setup):
    model, tokenizer, topic, *_ = setup
    prompt = tokenizer.encode("the king loves")
    run = generate_pplm(model, prompt, topic.target_ids, 10, PPLMSettings(step_size=0.0), num_samples=2, top_k=0,
                        seed=3, keep_probs=True)
    for b, new in enumerate(run.new_ids):
        ids = torch.tensor([prompt + new])
        expected = model(ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        assert (expected - run.step_logits[:, b]).abs().max() < 1e-5


def test_bow_gradient_raises_topic_mass(setup):
    model, tokenizer, topic, *_ = setup
    prompt = tokenizer.encode("the fool fears")
    mass = {}
    for step in (0.0, 1.0):
        run = generate_pplm(model, prompt, topic.target_ids, 12, PPLMSettings(step_size=step), num_samples=4,
                            top_k=0, keep_probs=True)
        assert not run.step_logits.requires_grad  # no autograd graph kept across the generation's steps
        mass[step] = float(run.step_logits[:, :, topic.target_ids].exp().sum(-1).mean())
    assert mass[1.0] > 2 * mass[0.0], mass


def test_window_limits_the_perturbation(setup):
    model, tokenizer, topic, *_ = setup
    ids = torch.tensor([tokenizer.encode("the king loves the crown and the sea")])
    past = [(k, v) for k, v in ((layer.keys, layer.values) for layer in model(ids[:, :-1]).cache.layers)]
    probs = model(ids).logits[:, -1].softmax(-1)
    settings = PPLMSettings(step_size=0.5, window=3)
    perturbed, norms = perturb_past(model, past, ids[:, -1:], probs, torch.tensor(topic.target_ids), settings, None)
    length = past[0][0].shape[2]
    for (k, v), (pk, pv) in zip(past, perturbed):
        assert torch.equal(k[:, :, : length - 3], pk[:, :, : length - 3])
        assert torch.equal(v[:, :, : length - 3], pv[:, :, : length - 3])
        assert (pk[:, :, -3:] - k[:, :, -3:]).abs().max() > 0
    assert len(norms) == model.config.n_layer and all(n.shape == (1,) for n in norms)


def test_pplm_refuses_a_backpack(setup):
    *_, backpack_dir, _ = setup
    backpack, tokenizer = load_model(backpack_dir)
    with pytest.raises(BackpackError, match="sense re-weighting"):
        generate_pplm(backpack, [1, 2], [3], 2)


def test_mauve_on_features(setup):
    model, tokenizer, *_ = setup
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    assert mauve_score(p, q, num_buckets=4) > 0.9
    assert mauve_score(p, q + 3.0, num_buckets=4) < 0.1
    features = text_features(model, tokenizer, ["the king loves the sea", "a fool"], pooling="last")
    assert features.shape == (2, model.config.n_embd) and np.isfinite(features).all()


def test_cli_pplm_and_compare(setup, capsys):
    _, _, _, gpt2_dir, backpack_dir, tmp = setup
    topic = write_topic(tmp / "royal.txt")
    references = tmp / "refs.txt"
    references.write_text("\n".join(["the king loves the crown.", "a queen sees the sea.", "my lord calls the fool.",
                                     "the knight follows my sword."] * 3), encoding="utf-8")
    out = tmp / "pplm"
    code, stdout, err = run_cli(capsys, "steer", "--model", gpt2_dir, "--topic", topic, "--strength", "0", "1",
                                "--pplm-step-sizes", "0", "1", "1", "1", "--samples", "2", "--length", "5",
                                "--prompt", "the", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "steer.json").read_text())["summary"]
    assert [(s["method"], s["setting"]) for s in summary] == [("pplm", "step 0"), ("pplm", "step 1")]

    out = tmp / "compare"
    code, stdout, err = run_cli(capsys, "steer", "--model", backpack_dir, "--compare", gpt2_dir, "--topic", topic,
                                "--strength", "0", "3", "--samples", "3", "--length", "5", "--prompt", "the",
                                "--prompt", "a queen", "--mauve-references", references, "--out", out)
    assert code == 0, err
    result = json.loads((out / "steer.json").read_text())
    assert [(s["method"], s["strength"]) for s in result["summary"]] == [("sense", 0), ("sense", 3), ("pplm", 0),
                                                                       ("pplm", 3)]
    for s in result["summary"]:
        assert 0 <= s["mauve"] <= 1 and s["perplexity"] > 1 and s["seconds_per_sample"] > 0
    table = (out / "steer.md").read_text()
    assert "| pplm | 3 | step 0.03 |" in table and "| sense | 3 | weights 3.3/3.3/3/1 |" in table
