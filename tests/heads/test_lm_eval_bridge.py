"""lm-eval on a masked in-memory model, offline, on a local JSONL task; equal to our own task evaluation."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

from backpacklm import BackpackConfig
from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.heads.gates import masking
from backpacklm.heads.lm_eval_bridge import export_lm_eval_task, lm_eval_evaluate, offline
from backpacklm.heads.tasks import Example, Task, builtin_task, evaluate_task
from backpacklm.model.transformer import build_model
from backpacklm.worlds.icl_tasks import icl_corpus

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = build_char_tokenizer(icl_corpus(n_prompts=60))
    torch.manual_seed(0)
    config = BackpackConfig.from_preset("tiny", vocab_size=len(tok), n_layer=2, n_embd=32, n_head=4, n_positions=128)
    model = build_model(config, "transformer").eval()
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    task = builtin_task("copy", n=24, seed=3)
    name = export_lm_eval_task(task, folder, k=2, seed=1)
    return model, tok, task, folder, name


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def responses(result, name):
    return np.array([[ll for ll, _ in s["responses"]] for s in result.samples[name]])


def test_lm_eval_runs_a_local_task_offline_on_a_masked_model(setup, no_network):
    model, tok, task, folder, name = setup
    env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    removed = torch.ones(2, 4)
    removed[1] = 0  # all heads of the last layer
    removed[0, :2] = 0
    full = lm_eval_evaluate(model, tok, name, include_path=folder, log_samples=True)
    masked = lm_eval_evaluate(model, tok, name, include_path=folder, head_mask=removed, ffn_mask=[1.0, 0.0],
                              log_samples=True)
    assert masked.masked_heads == 6 and masked.masked_ffns == 1
    assert set(full.metrics[name]) >= {"acc,none", "acc_norm,none"}

    ours_full = evaluate_task(model, tok, task, k=2, seed=1)
    with masking(model, head_mask=removed, ffn_mask=[1.0, 0.0]):
        ours_masked = evaluate_task(model, tok, task, k=2, seed=1)
    for theirs, ours in [(full, ours_full), (masked, ours_masked)]:
        # the same log-likelihood of every choice, so the same accuracy, raw and per character
        assert np.abs(responses(theirs, name) - np.array(ours.choice_logprobs)).max() < 1e-4
        assert theirs.metrics[name]["acc,none"] == pytest.approx(ours.accuracy, abs=1e-9)
        assert theirs.metrics[name]["acc_norm,none"] == pytest.approx(ours.accuracy_with("char"), abs=1e-9)
    # removing heads changes what lm-eval measures
    assert np.abs(responses(full, name) - responses(masked, name)).max() > 1e-2
    assert not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())  # hooks removed
    assert {k: os.environ.get(k) for k in env_before} == env_before
    json.dumps(masked.to_dict())


def test_offline_sets_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with offline():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "0"


def test_bad_requests_are_one_line_errors(setup, tmp_path):
    model, tok, _, folder, name = setup
    generation = Task("g", [Example("a", answer="b")])
    with pytest.raises(BackpackError, match="generation task"):
        export_lm_eval_task(generation, tmp_path)
    with pytest.raises(BackpackError, match="head mask has shape"):
        lm_eval_evaluate(model, tok, name, include_path=folder, head_mask=torch.ones(3, 4))
