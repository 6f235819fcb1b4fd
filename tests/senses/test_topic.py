"""Topic control by sense re-weighting: topic files, scores, quantile weights, annealing, cache equality, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from backpacklm.errors import BackpackError
from backpacklm.senses.steering import SamplingSettings, evaluate_steering
from backpacklm.senses.words import word_ids
from backpacklm.senses.topic import (STRENGTHS, anneal_activation, annealed_multipliers, generate_with_topic,
                                     load_topic, make_topic, read_topic_words, sense_topic_scores, topic_weights)
from tests.helpers import run_cli
from tests.senses.steer_fixtures import save, tiny_backpack, tiny_tokenizer, write_topic


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("topic")
    tokenizer = tiny_tokenizer(tmp)
    model = tiny_backpack(len(tokenizer))
    return model, tokenizer, save(model, tokenizer, tmp / "backpack"), tmp


def test_topic_file_words_and_errors(tmp_path, setup):
    model, tokenizer, _, _ = setup
    path = tmp_path / "royal.txt"
    path.write_text("king\n\n crown \nking\r\nzzqx\n", encoding="utf-8")
    assert read_topic_words(path) == ["king", "crown", "zzqx"]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte order mark is not a word
    assert read_topic_words(tmp_path / "bom.txt") == ["king", "crown", "zzqx"]
    topic = load_topic(path, tokenizer, model.config.vocab_size)
    assert topic.name == "royal"
    assert topic.target_ids == sorted({word_ids(tokenizer, w)[0] for w in ("king", "crown", "zzqx")})
    assert tokenizer.decode(word_ids(tokenizer, "king")[:1]) == " king"  # the leading space is part of the target
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(BackpackError, match="no words"):
        read_topic_words(tmp_path / "empty.txt")
    with pytest.raises(BackpackError, match="does not exist"):
        read_topic_words(tmp_path / "missing.txt")
    with pytest.raises(BackpackError, match="no words"):
        make_topic(tokenizer, [], model.config.vocab_size)


def test_scores_follow_the_definition(setup):
    model, _, _, _ = setup
    targets = [5, 17, 40]
    scores = sense_topic_scores(model, targets, chunk=50)  # several chunks
    assert scores.shape == (model.config.vocab_size, model.config.num_senses)
    E = model.get_input_embeddings().weight
    for v in (0, 77, model.config.vocab_size - 1):
        logits = model.sense_network(E[[v]])[0] @ E.T  # [k, V]
        expected = (logits[:, targets] / logits.max(-1, keepdim=True).values).sum(-1)
        torch.testing.assert_close(scores[v], expected.detach(), rtol=1e-5, atol=1e-5)


def test_quantile_weights():
    scores = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    delta = topic_weights(scores, 3)
    share = {w: float((delta == w).float().mean()) for w in (3.3, 3.0, 1.0)}
    assert share[3.3] == pytest.approx(0.20, abs=0.002)  # (0.80, 1]: w0 = w1 = 3.3
    assert share[3.0] == pytest.approx(0.20, abs=0.002)
    assert share[1.0] == pytest.approx(0.60, abs=0.002)
    delta1 = topic_weights(scores, 1)
    assert float((delta1 == 1.5).float().mean()) == pytest.approx(0.20, abs=0.002)
    top = scores > torch.quantile(scores.flatten(), 0.95)
    assert bool((delta1[top] == 1.5).all()) and bool((topic_weights(scores, (4, 2, 1.5, 1))[top] == 4).all())
    assert bool((topic_weights(scores, 0) == 1).all())
    with pytest.raises(BackpackError, match="strength"):
        topic_weights(scores, 7)


def test_annealing_formula():
    delta = torch.tensor([[[3.3, 1.0], [3.0, 3.3]]])  # [b=1, t=2, k=2]
    activation = torch.tensor([[[0.0, 5.0], [20.0, 1.0]]])
    got = annealed_multipliers(delta, activation, 3.3)
    f = 3.3 / 7.5
    for i in range(2):
        for l in range(2):
            s = 1 / (1 + math.exp(f * float(activation[0, i, l]) - 6)) * (1 + i / 100)
            assert float(got[0, i, l]) == pytest.approx(float(delta[0, i, l]) * s + 1 - s, rel=1e-6)
    senses = torch.randn(2, 3, 4, 8)
    emb = torch.randn(2, 3, 8)
    brute = torch.zeros(2, 3, 4)
    for i in range(3):
        for j in range(3):
            brute[:, i] += torch.relu((senses[:, i] * emb[:, j, None]).sum(-1))
    torch.testing.assert_close(anneal_activation(senses, emb), brute)


def test_multipliers_scale_senses_before_mixing(setup):
    """The model's sense_multipliers implement o_i = sum_l sum_j alpha_l[i, j] delta'[j, l] C_l(x_j)."""
    model, tokenizer, _, _ = setup
    ids = torch.tensor([tokenizer.encode("the king loves the crown")])
    plain = model(ids, output_senses=True, output_contextualization=True)
    multipliers = torch.rand(1, ids.shape[1], model.config.num_senses, generator=torch.Generator().manual_seed(0)) * 3
    mixed = torch.einsum("blij,bjl,bjld->bid", plain.contextualization, multipliers, plain.senses)
    expected = mixed @ model.get_input_embeddings().weight.T
    torch.testing.assert_close(model(ids, sense_multipliers=multipliers).logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("greedy", [True, False])
def test_cached_generation_equals_uncached(setup, greedy):
    model, tokenizer, _, _ = setup
    topic = make_topic(tokenizer, ["king", "crown", "sword"], model.config.vocab_size)
    delta = topic_weights(sense_topic_scores(model, topic.target_ids), 3)
    prompt = tokenizer.encode("the king loves")
    kwargs = dict(num_samples=3, greedy=greedy, seed=1, keep_logits=True, top_k=20)
    cached = generate_with_topic(model, prompt, delta, 24, use_cache=True, **kwargs)
    uncached = generate_with_topic(model, prompt, delta, 24, use_cache=False, **kwargs)
    plain = generate_with_topic(model, prompt, None, 24, use_cache=True, **kwargs)
    assert cached.new_ids == uncached.new_ids
    assert (cached.step_logits - uncached.step_logits).abs().max() < 1e-5
    assert (cached.step_logits - plain.step_logits).abs().max() > 1e-3  # the intervention acts
    # strength 0 is no intervention at all
    ones = generate_with_topic(model, prompt, topic_weights(delta, 0), 24, **kwargs)
    assert (ones.step_logits - plain.step_logits).abs().max() < 1e-5


def test_python_api_and_metrics(setup):
    model, tokenizer, _, _ = setup
    topic = make_topic(tokenizer, ["king", "crown"], model.config.vocab_size, "royal")
    report = evaluate_steering({"sense": model}, tokenizer, [topic], [0, 3], ["the king"],
                               SamplingSettings(length=8, samples=3, top_k=0), scorer=lambda text: "king" in text)
    assert [(r.method, r.strength, r.samples) for r in report.rows] == [("sense", 0, 3), ("sense", 3, 3)]
    for row in report.rows:
        assert 0 <= row.success <= 1 and 0 <= row.in_vocab_share <= 1
        assert 1 < row.perplexity < 10 * model.config.vocab_size and row.mauve is None
    assert "| sense | 3 | weights 3.3/3.3/3/1 |" in report.markdown()
    # settings are refused before any generation: methods and model kinds first, also with no strengths
    with pytest.raises(BackpackError, match="method must be one of"):
        evaluate_steering({"bogus": model}, tokenizer, [topic], [], ["the king"])
    with pytest.raises(BackpackError, match="PPLM perturbs a Transformer's cache"):
        evaluate_steering({"pplm": model}, tokenizer, [topic], [7], ["the king"])


def test_cli(setup, capsys):
    _, _, model_dir, tmp = setup
    topic = write_topic(tmp / "royal.txt")
    out = tmp / "out"
    code, stdout, err = run_cli(capsys, "steer", "--model", model_dir, "--topic", topic, "--strength", "0", "3",
                                "--samples", "2", "--length", "6", "--prompt", "the", "--out", out)
    assert code == 0, err
    result = json.loads((out / "steer.json").read_text())
    assert [(s["method"], s["strength"]) for s in result["summary"]] == [("sense", 0), ("sense", 3)]
    assert result["rows"][1]["setting"] == "weights " + "/".join(f"{w:g}" for w in STRENGTHS[3])
    assert (out / "steer.png").stat().st_size > 1000 and "| sense | 3 |" in (out / "steer.md").read_text()

    (tmp / "empty.txt").write_text("\n", encoding="utf-8")
    code, stdout, err = run_cli(capsys, "steer", "--model", model_dir, "--topic", tmp / "empty.txt", "--out", out)
    assert code == 2 and err.count("\n") == 1 and "has no words" in err
    code, _, err = run_cli(capsys, "steer", "--model", model_dir, "--topic", topic, "--method", "pplm", "--out", out)
    assert code == 2 and "Transformer" in err


def test_topic_word_scorer_matches_whole_words_and_phrases():
    """PPLM's lists hold entries of several words ("baking dish"): they count when the words occur in a row (they
    never matched, as the text was split into single words); single words match whole words only."""
    from backpacklm.senses.steering_metrics import semantic_success, topic_word_scorer

    judge = topic_word_scorer(["baking dish", "CPU", "oven", "  "])
    texts = ["Put it in a Baking  dish.", "the cpu is hot", "an ovenproof plate", "a dish for baking", "oven!"]
    assert [judge(t) for t in texts] == [True, True, False, False, True]
    assert semantic_success(texts, judge) == 0.6
