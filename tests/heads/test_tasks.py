"""Few-shot tasks: the JSONL format and its errors, seeded prompts, scoring exactness, batching, generation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from backpacklm import BackpackConfig, BackpackForCausalLM
from backpacklm.data.tokenizers import build_char_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.heads.tasks import (
    Example, Task, answer_batches, builtin_task, demonstration_indices, encode_pair, evaluate_task, few_shot_prompts,
    load_task, write_task_jsonl,
)
from backpacklm.worlds.icl_tasks import icl_corpus

from .models import tiny_model


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(icl_corpus(n_prompts=60) + "xyz ")  # 30 ids, no pad token


class InductionOracle(nn.Module):
    """A perfect copier: at each position, all mass on the token that followed the latest earlier occurrence of the
    current token (uniform if none). It answers every `copy` item, so any misalignment of prompts, continuations
    or padding in the scorer shows up as a wrong answer."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(n_positions=512)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b in range(input_ids.shape[0]):
            last = {}
            for t in range(input_ids.shape[1]):
                if not mask[b, t]:
                    continue
                token = int(input_ids[b, t])
                if token in last:
                    logits[b, t, int(input_ids[b, last[token] + 1])] = 20.0
                last[token] = t
        return SimpleNamespace(logits=logits)


class Unigram(nn.Module):
    """Context-free next-token log-probabilities `logp` [vocab]: a model whose scores we know exactly."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.logp = nn.Parameter(logp, requires_grad=False)
        self.config = SimpleNamespace(n_positions=512)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return SimpleNamespace(logits=self.logp.expand(*input_ids.shape, -1).clone())


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- format

def test_roundtrip_keeps_every_field(tmp_path):
    task = builtin_task("map", n=12, seed=3)
    loaded = load_task(write_task_jsonl(task, tmp_path / "map.jsonl"))
    assert (loaded.name, loaded.target_delimiter, loaded.fewshot_delimiter) == ("map", "", "\n")
    assert [(e.context, e.choices, e.gold) for e in loaded.examples] == [(e.context, e.choices, e.gold) for e in task.examples]
    assert len(loaded.train) == len(task.train)
    assert few_shot_prompts(loaded, 4, 1) == few_shot_prompts(task, 4, 1)


def test_generation_file_and_defaults(tmp_path):
    path = write_lines(tmp_path / "g.jsonl", [json.dumps({"prompt": "2+2=", "answer": "4"}), "",
                                             json.dumps({"prompt": "1+2=", "answer": "3", "split": "train"})])
    task = load_task(path)
    assert task.kind == "generation" and task.name == "g"
    assert (task.target_delimiter, task.fewshot_delimiter) == (" ", "\n\n")
    assert few_shot_prompts(task, 1, 0) == ["1+2= 3\n\n2+2="]


@pytest.mark.parametrize("lines, message", [
    ([], "empty task file"),
    (['{"context": "a", "choices": ["b"], "gold": 0}', '{"context": "a", "choices": ["b"]'], "g.jsonl:2: not valid JSON"),
    (['{"context": "a", "gold": 0}'], "g.jsonl:1: missing field 'choices'"),
    (['{"prompt": "a"}'], "g.jsonl:1: missing field 'answer'"),
    (['{"context": "a", "choices": ["b", "c"], "gold": 2}'], "g.jsonl:1: gold 2 out of range for 2 choices"),
    (['{"context": "a", "choices": ["b", "c"], "gold": 0}', '{"prompt": "a", "answer": "b"}'], "mixes multiple-choice"),
    (['[1, 2]'], "g.jsonl:1: expected a JSON object"),
    (['{"prompt": "a", "answer": "b", "split": "train"}'], "no evaluation examples"),
])
def test_bad_files_are_one_line_errors(tmp_path, lines, message):
    with pytest.raises(BackpackError, match=message) as err:
        load_task(write_lines(tmp_path / "g.jsonl", lines))
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(BackpackError, match="no such task file"):
        load_task(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------------- prompts

def test_prompts_are_seeded_and_never_show_the_example_itself():
    task = builtin_task("copy", n=30, seed=0)
    task = Task("copy", task.examples, [], task.target_delimiter, task.fewshot_delimiter)  # demos from the others
    assert few_shot_prompts(task, 3, seed=7) == few_shot_prompts(task, 3, seed=7)
    assert few_shot_prompts(task, 3, seed=7) != few_shot_prompts(task, 3, seed=8)
    picks = demonstration_indices(task, 29, seed=1)  # every other example: all but i, each exactly once
    assert all(sorted(p) == [j for j in range(30) if j != i] for i, p in enumerate(picks))
    with pytest.raises(BackpackError, match="only 29 other examples"):
        few_shot_prompts(task, 30, 0)
    # with a train split, example i's prompt does not depend on how many examples the task has
    assert few_shot_prompts(builtin_task("map", 10, 3), 5, 2) == few_shot_prompts(builtin_task("map", 30, 3), 5, 2)[:10]
    prompt = few_shot_prompts(task, 2, 0)[0]
    assert prompt.count("\n") == 2 and prompt.endswith(task.examples[0].context)


# ---------------------------------------------------------------------------------------------------- scoring

@pytest.mark.parametrize("k, batch_size, side", [(0, 1, "right"), (2, 5, "right"), (2, 7, "left")])
def test_oracle_scores_every_copy_item(tok, k, batch_size, side):
    task = builtin_task("copy", n=25, seed=1)
    result = evaluate_task(InductionOracle(len(tok)), tok, task, k=k, batch_size=batch_size, padding_side=side)
    assert result.accuracy == 1.0 and result.n == 25 and result.chance == 0.25
    wrong = Task("copy", [Example(e.context, e.choices, (e.gold + 1) % 4) for e in task.examples], task.train, "", "\n")
    assert evaluate_task(InductionOracle(len(tok)), tok, wrong, k=k).accuracy == 0.0


def test_length_normalisation_changes_the_choice(tok):
    vocab = tok.get_vocab()
    p = torch.full((len(tok),), 1e-3)
    p[vocab["a"]] = p[vocab["b"]] = math.exp(-1.0)
    p[vocab["c"]] = math.exp(-1.5)
    p[vocab["x"]] = 1 - float(p.sum()) + 1e-3
    model = Unigram(p.log())
    task = Task("t", [Example("x", ("ab", "c"), 0)], target_delimiter="", fewshot_delimiter="\n")
    raw = evaluate_task(model, tok, task, length_normalize="none")
    assert np.allclose(raw.choice_logprobs[0], [-2.0, -1.5], atol=1e-5)  # log p(ab) = -1 - 1, log p(c) = -1.5
    assert raw.choice_tokens[0] == [2, 1] and raw.choice_chars[0] == [2, 1]
    assert raw.predictions == [1] and raw.accuracy == 0.0  # summed: "c" wins
    per_char = evaluate_task(model, tok, task, length_normalize="char")
    assert per_char.predictions == [0] and per_char.accuracy == 1.0  # per character: -1 > -1.5, "ab" wins
    assert evaluate_task(model, tok, task, length_normalize=True).accuracy == 1.0
    assert raw.accuracy_with("token") == 1.0 and per_char.accuracy_with("none") == 0.0
    with pytest.raises(BackpackError, match="length normalisation"):
        evaluate_task(model, tok, task, length_normalize="bytes")


@pytest.mark.parametrize("arch", ["gpt2", "backpack", "llama", "opt", "gpt_neox"])
def test_batched_equals_unbatched(tok, arch):
    model = tiny_model(arch)
    task = builtin_task("copy", n=9, seed=2)  # prompts of different lengths: real padding in every batch
    one = np.array(evaluate_task(model, tok, task, k=1, batch_size=1).choice_logprobs)
    right = np.array(evaluate_task(model, tok, task, k=1, batch_size=6).choice_logprobs)
    left = np.array(evaluate_task(model, tok, task, k=1, batch_size=6, padding_side="left").choice_logprobs)
    assert np.abs(one - right).max() < 1e-5 and np.abs(one - left).max() < 1e-5
    assert np.isfinite(one).all() and one.std() > 0


def test_answer_batches_mark_the_gold_answer(tok):
    model = tiny_model("gpt2")
    task = builtin_task("pairs", n=10, seed=0)
    result = evaluate_task(model, tok, task, k=3, seed=4)
    gold_logprobs = [lp[g] for lp, g in zip(result.choice_logprobs, result.golds)]
    seen = []
    for ids, mask, answer in answer_batches(tok, task, k=3, seed=4, batch_size=4):
        assert ids.shape == mask.shape == answer.shape and answer.dtype == torch.bool
        assert not (answer & (mask == 0)).any()
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1], -1)
        token_logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
        seen += (token_logp * answer[:, 1:]).sum(1).tolist()
        for row in range(len(ids)):
            assert tok.decode(ids[row][answer[row]]) in "abcdefgh" and answer[row].sum() == 1
    assert np.allclose(seen, gold_logprobs, atol=1e-5)


def test_empty_gold_continuation_is_an_error_not_zero_importance(tok):
    from backpacklm.heads.importance import head_importance

    task = Task("t", [Example("ab", ("c", "d"), 1), Example("ba", ("", "c"), 0)], target_delimiter="")
    with pytest.raises(BackpackError, match=r"^t: example 1: gold continuation '' encodes to no tokens$"):
        next(iter(answer_batches(tok, task, batch_size=8)))
    with pytest.raises(BackpackError, match="example 1: gold continuation '' encodes to no tokens"):
        head_importance(tiny_model("gpt2"), tok, task, progress=False)  # was: all-zero scores, no error


def test_generation_exact_match_batched(tok):
    torch.manual_seed(0)
    config = BackpackConfig.from_preset("tiny", vocab_size=len(tok), n_layer=2, n_embd=32, n_head=4, n_positions=64)
    model = BackpackForCausalLM(config).eval()  # vocabulary = the tokenizer's, so every generated id decodes
    base = builtin_task("copy", n=8, seed=5)
    probe = Task("g", [Example(e.context, answer="a") for e in base.examples],
                 [Example(e.context, answer=e.target) for e in base.train], "", "\n")
    greedy = evaluate_task(model, tok, probe, k=1, batch_size=1, max_new_tokens=3).predictions
    batched = evaluate_task(model, tok, probe, k=1, batch_size=3, max_new_tokens=3)  # left-padded batches
    assert batched.predictions == greedy and len({len(p) for p in few_shot_prompts(probe, 1, 0)}) > 1
    own = Task("g", [Example(e.context, answer=g) for e, g in zip(probe.examples, greedy)], probe.train, "", "\n")
    result = evaluate_task(model, tok, own, k=1, batch_size=4, max_new_tokens=3)
    assert result.accuracy == 1.0 and result.kind == "generation" and result.choice_logprobs is None
    shifted = Task("g", [Example(e.context, answer=e.answer + "q") for e in own.examples], own.train, "", "\n")
    assert evaluate_task(model, tok, shifted, k=1, batch_size=4, max_new_tokens=3).accuracy == 0.0


class Demonstrator(nn.Module):
    """Continues every prompt as its demonstrations do: T + answer + F (the example found by its context)."""

    def __init__(self, tokenizer, task: Task):
        super().__init__()
        self.tok, self.task = tokenizer, task
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(n_positions=512)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for row, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(row[mask.bool()].tolist())
            ex = next(e for e in self.task.examples if prompt.endswith(e.context))
            new = self.tok.encode(self.task.target_delimiter + ex.answer + self.task.fewshot_delimiter)
            new = (new + [0] * max_new_tokens)[:max_new_tokens]
            rows.append(torch.cat([row, torch.tensor(new)]))
        return torch.stack(rows)


@pytest.mark.parametrize("delimiter", ["", " ", "=", " > "])
def test_generation_matches_the_answer_after_the_target_delimiter(tok, delimiter):
    """The prompt ends at the context, so a model that writes T + answer (what importance scores) is right."""
    examples = [Example(c, answer=a) for c, a in [("ab", "ba"), ("cd", "dc"), ("ef", "fe"), ("gh", "hg")]]
    task = Task("rev", examples, target_delimiter=delimiter, fewshot_delimiter="\n")
    result = evaluate_task(Demonstrator(tok, task), tok, task, k=1, batch_size=2)
    assert result.accuracy == 1.0 and result.predictions == ["ba", "dc", "fe", "hg"]  # was 0.0 for "=" and " > "
    wrong = Task("rev", [Example(e.context, answer=e.answer[::-1]) for e in examples], [], delimiter, "\n")
    assert evaluate_task(Demonstrator(tok, task), tok, wrong, k=1, batch_size=2).accuracy == 0.0


def test_bpe_pairs_split_like_lm_eval():
    from backpacklm.data.tokenizers import train_bpe_tokenizer

    bpe = train_bpe_tokenizer(["the sky is blue and the sea is blue too"] * 20, vocab_size=300)
    context, continuation = encode_pair(bpe, "the sky is ", "blue")  # trailing space moves to the continuation
    assert (context, continuation) == encode_pair(bpe, "the sky is", " blue")
    assert bpe.decode(context) == "the sky is" and bpe.decode(continuation) == " blue"
    assert context + continuation == bpe.encode("the sky is blue")


def test_task_text_the_tokenizer_cannot_encode_is_an_error():
    from backpacklm.data.tokenizers import build_word_tokenizer

    words = build_word_tokenizer(["the sky is blue"])
    assert encode_pair(words, "the sky is", " blue") == (words.encode("the sky is"), words.encode(" blue"))
    with pytest.raises(BackpackError, match="1 word\\(s\\) not in the tokenizer's vocabulary: 'green'"):
        encode_pair(words, "the sky is", " green")  # not scored as <unk>
    with pytest.raises(BackpackError, match="character"):
        encode_pair(build_char_tokenizer("the sky"), "the sky is", " blue")
