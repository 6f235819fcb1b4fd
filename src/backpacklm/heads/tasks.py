"""Few-shot tasks: a JSONL format, seeded k-shot prompts, and batched evaluation of any causal LM on them.

JSONL format, one example per line (blank lines ignored):
  multiple choice   {"context": "The sky is", "choices": ["blue", "green"], "gold": 0}
  generation        {"prompt": "2 + 2 =", "answer": "4"}
  optional per line "split": "train" puts the example in the demonstration pool (default "eval").
  optional first line {"task": {"name": ..., "target_delimiter": ..., "fewshot_delimiter": ...}} sets the task's
  name and delimiters (defaults: the file name, " " and "\n\n", lm-eval's defaults).
All examples of a file are of one kind.

A k-shot prompt, as in lm-eval:  demo_1 + F + ... + demo_k + F + context, where demo = context + T + target,
F the few-shot delimiter and T the target delimiter; a choice (or answer) c is scored as the continuation T + c.
Demonstrations are drawn without replacement, seeded per example, from the task's train split, or, when it has none,
from the other evaluation examples (never the example itself).

Texts are tokenized with the tokenizer's defaults (so a BOS where the tokenizer adds one), as lm-eval does.
Scores are log-likelihoods in nats: log p(continuation | prompt) = sum over its tokens of log p(token | prefix).
Length normalisation divides that sum by a length: "char" by the choice's characters (without T; lm-eval's acc_norm,
comparable across tokenizers) or "token" by the continuation's tokens (a per-token mean log-prob). Multiple-choice accuracy picks the best score.
Generation is greedy (`generate()`) from the same prompt (ending at the context): a leading T is dropped from the
output, which is then cut at the few-shot delimiter and compared by exact match after stripping whitespace, so the
model is judged on the continuation T + answer that head importance scores.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import replacing
from ..data.batching import pad_rows
from ..data.tokenizers import check_encodable
from ..errors import BackpackError
from ..model.loading import max_positions

NORMALIZATIONS = ("none", "token", "char")


@dataclass(frozen=True)
class Example:
    """One task item: `context` plus `choices`/`gold` (multiple choice) or `answer` (generation)."""

    context: str
    choices: tuple[str, ...] | None = None
    gold: int | None = None
    answer: str | None = None

    @property
    def target(self) -> str:
        """The gold continuation: choices[gold] or answer."""
        return self.choices[self.gold] if self.choices is not None else self.answer


@dataclass
class Task:
    """A named set of evaluation examples, an optional demonstration pool, and the prompt delimiters."""

    name: str
    examples: list[Example]
    train: list[Example] = field(default_factory=list)
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"

    @property
    def kind(self) -> str:
        """"multiple_choice" or "generation"."""
        return "multiple_choice" if self.examples[0].choices is not None else "generation"

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random choice (0 for generation)."""
        if self.kind == "generation":
            return 0.0
        return float(np.mean([1 / len(ex.choices) for ex in self.examples]))


@dataclass
class TaskResult:
    """Accuracy of a model on a task.

    correct: [n] per evaluation example. predictions: [n] chosen choice index (multiple choice) or generated text.
    choice_logprobs / choice_tokens / choice_chars: [n][choices] log p(T + choice | prompt) in nats, the tokens of
    T + choice, the characters of the choice; golds: [n] gold indices (multiple choice only; None for generation).
    """

    task: str
    kind: str
    k: int
    seed: int
    length_normalize: str
    accuracy: float
    n: int
    chance: float
    correct: list[bool]
    predictions: list
    choice_logprobs: list[list[float]] | None = None
    choice_tokens: list[list[int]] | None = None
    choice_chars: list[list[int]] | None = None
    golds: list[int] | None = None

    def accuracy_with(self, length_normalize: str | bool) -> float:
        """Multiple-choice accuracy recomputed under another normalisation ("none", "token", "char")."""
        norm = _normalization(length_normalize)
        if self.choice_logprobs is None:
            raise BackpackError(f"task {self.task!r} is a generation task: no choices to normalise")
        picks = [int(np.argmax(_normalized(lp, nt, nc, norm))) for lp, nt, nc in
                 zip(self.choice_logprobs, self.choice_tokens, self.choice_chars)]
        return float(np.mean([p == g for p, g in zip(picks, self.golds)]))

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------- loading

def load_task(path: str | Path, train_path: str | Path | None = None) -> Task:
    """Read a JSONL task (format in the module docstring); `train_path` adds a file of demonstrations."""
    path = Path(path)
    header, examples, train = _read_jsonl(path)
    if train_path is not None:
        _, more_eval, more_train = _read_jsonl(Path(train_path))  # a demonstrations file may hold only "train" lines
        train += more_eval + more_train
    if not examples:
        raise BackpackError(f"{path}: no evaluation examples (every line has \"split\": \"train\")")
    kinds = {"multiple_choice" if ex.choices is not None else "generation" for ex in examples + train}
    if len(kinds) > 1:
        raise BackpackError(f"{path}: mixes multiple-choice and generation examples; use one kind per task")
    return Task(
        name=str(header.get("name", path.stem)),
        examples=examples,
        train=train,
        target_delimiter=str(header.get("target_delimiter", " ")),
        fewshot_delimiter=str(header.get("fewshot_delimiter", "\n\n")),
    )


def _read_jsonl(path: Path) -> tuple[dict, list[Example], list[Example]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BackpackError(f"{path}: no such task file") from None
    except IsADirectoryError:
        raise BackpackError(f"{path}: is a folder, not a JSONL task file") from None
    except UnicodeDecodeError as err:
        raise BackpackError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from None
    except OSError as err:
        raise BackpackError(f"{path}: cannot read ({err.strerror})") from None
    header: dict = {}
    examples: list[Example] = []
    train: list[Example] = []
    seen_example = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise BackpackError(f"{where}: not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise BackpackError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "task" in record and not seen_example:
            header = _parse_header(record["task"], where)
            continue
        seen_example = True
        split = record.get("split", "eval")
        if split not in ("train", "eval", "test", "validation"):
            raise BackpackError(f"{where}: split must be \"train\" or \"eval\", got {split!r}")
        (train if split == "train" else examples).append(_parse_example(record, where))
    if not examples and not train:
        raise BackpackError(f"{path}: empty task file (no examples)")
    return header, examples, train


def _parse_header(header, where: str) -> dict:
    if not isinstance(header, dict):
        raise BackpackError(f"{where}: \"task\" must be an object with name / target_delimiter / fewshot_delimiter")
    unknown = set(header) - {"name", "target_delimiter", "fewshot_delimiter"}
    if unknown:
        raise BackpackError(f"{where}: unknown task setting(s) {', '.join(sorted(unknown))}")
    for key, value in header.items():
        if not isinstance(value, str):
            raise BackpackError(f"{where}: task setting {key!r} must be a string")
    return header


def _parse_example(record: dict, where: str) -> Example:
    if "choices" in record or "gold" in record or "context" in record:
        for key in ("context", "choices", "gold"):
            if key not in record:
                raise BackpackError(f"{where}: missing field {key!r} (multiple choice needs context, choices, gold)")
        context, choices, gold = record["context"], record["choices"], record["gold"]
        if not isinstance(context, str):
            raise BackpackError(f"{where}: 'context' must be a string")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise BackpackError(f"{where}: 'choices' must be a non-empty list of strings")
        if isinstance(gold, bool) or not isinstance(gold, int):
            raise BackpackError(f"{where}: 'gold' must be an integer index into choices, got {gold!r}")
        if not 0 <= gold < len(choices):
            raise BackpackError(f"{where}: gold {gold} out of range for {len(choices)} choices")
        return Example(context=context, choices=tuple(choices), gold=gold)
    for key in ("prompt", "answer"):
        if key not in record:
            raise BackpackError(
                f"{where}: missing field {key!r} (expected context/choices/gold or prompt/answer)"
            )
    if not isinstance(record["prompt"], str) or not isinstance(record["answer"], str):
        raise BackpackError(f"{where}: 'prompt' and 'answer' must be strings")
    if not record["answer"].strip():
        raise BackpackError(f"{where}: 'answer' is empty")
    return Example(context=record["prompt"], answer=record["answer"])


def write_task_jsonl(task: Task, path: str | Path) -> Path:
    """Write `task` in the JSONL format (header line, train split, then evaluation examples), atomically."""
    path = Path(path)
    header = {"task": {"name": task.name, "target_delimiter": task.target_delimiter,
                       "fewshot_delimiter": task.fewshot_delimiter}}
    lines = [json.dumps(header, ensure_ascii=False)]
    for split, examples in (("train", task.train), ("eval", task.examples)):
        for ex in examples:
            if ex.choices is not None:
                record = {"context": ex.context, "choices": list(ex.choices), "gold": ex.gold}
            else:
                record = {"prompt": ex.context, "answer": ex.answer}
            if split == "train":
                record["split"] = "train"
            lines.append(json.dumps(record, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def builtin_task(name: str, n: int = 200, seed: int = 0) -> Task:
    """A synthetic in-context task (see `backpacklm.worlds.icl_tasks`): n evaluation examples, seeded."""
    from ..worlds.icl_tasks import builtin_task as make

    return make(name, n=n, seed=seed)


# ---------------------------------------------------------------------------------------------------- prompts

def demonstration_indices(task: Task, k: int, seed: int) -> list[list[int]]:
    """[n][k] indices of each evaluation example's demonstrations: into task.train if it has examples, else into
    task.examples (excluding the example itself). Seeded per example: with a train split, example i's demos do not
    depend on how many examples the task has."""
    n = len(task.examples)
    pool = len(task.train) if task.train else n - 1
    if k < 0:
        raise BackpackError(f"k (shots) must be >= 0, got {k}")
    if k > pool:
        source = "train examples" if task.train else "other examples"
        raise BackpackError(f"k={k} shots but task {task.name!r} has only {pool} {source} to draw demonstrations from")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        picks = rng.choice(pool, size=k, replace=False).tolist() if k else []
        if not task.train:
            picks = [j + (j >= i) for j in picks]  # skip example i
        out.append(picks)
    return out


def few_shot_prompts(task: Task, k: int = 0, seed: int = 0) -> list[str]:
    """[n] k-shot prompts, each ending with its example's context (the continuation T + target is not included)."""
    pool = task.train or task.examples
    prompts = []
    for ex, demos in zip(task.examples, demonstration_indices(task, k, seed)):
        shots = "".join(pool[j].context + task.target_delimiter + pool[j].target + task.fewshot_delimiter for j in demos)
        prompts.append(shots + ex.context)
    return prompts


# ---------------------------------------------------------------------------------------------------- encoding

def check_task_encodable(tokenizer, task: Task) -> None:
    """BackpackError naming the task if any of its texts (contexts, choices, answers, demonstrations, delimiters)
    holds a character or word the tokenizer lacks: checked before any work, not halfway through a run."""
    texts = [task.target_delimiter, task.fewshot_delimiter]
    for ex in (*task.examples, *task.train):
        texts += [ex.context, *(ex.choices or ()), ex.answer or ""]
    for text in dict.fromkeys(texts):
        try:
            check_encodable(tokenizer, text)
        except BackpackError as err:
            raise BackpackError(f"task {task.name}: {err}") from None


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval makes them: trailing whitespace of the context moves to the
    continuation, the whole text is encoded once and split at the context's length (so BPE merges stay natural).
    An empty context becomes the BOS (or EOS) token, so the first continuation token has something to condition on."""
    check_encodable(tokenizer, context + continuation)  # unknown words must not score as <unk>
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [_prefix_id(tokenizer)], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    return whole[:n_context], whole[n_context:]


def _prefix_id(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise BackpackError("the tokenizer has no BOS or EOS token to start an empty context with")


def pad_id(tokenizer) -> int:
    """The pad id: the tokenizer's pad token, else EOS, else 0 (padded positions are masked out, so any id works)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def pad_batch(sequences: list[list[int]], pad: int, side: str = "right") -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, position_ids), each [batch, pos], for token lists of different lengths.

    position_ids count only real tokens (0 at each sequence's first token), so left padding changes nothing."""
    ids, real = pad_rows(sequences, pad, side)
    mask = real.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _truncate(context: list[int], continuation: list[int], limit: int | None) -> list[int]:
    """context + continuation, cut from the left to `limit` tokens (the continuation must fit whole)."""
    ids = context + continuation
    if limit is None or len(ids) <= limit:
        return ids
    if len(continuation) >= limit:
        raise BackpackError(f"a continuation of {len(continuation)} tokens does not fit the model's {limit} positions")
    return ids[-limit:]


def answer_batches(tokenizer, task: Task, k: int = 0, seed: int = 0, batch_size: int = 8,
                   max_length: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """k-shot prompts with the gold continuation appended, right-padded, in batches of `batch_size` examples.

    Yields (input_ids [batch, pos] long, attention_mask [batch, pos] long 1/0, answer_mask [batch, pos] bool):
    answer_mask[b, t] marks the tokens of T + target. The answer loss (mean NLL of answer tokens) is
    -log_softmax(logits[:, :-1])[input_ids[:, 1:]] averaged where answer_mask[:, 1:].
    Prompts longer than `max_length` lose their oldest tokens; a gold continuation of no tokens is a BackpackError.
    """
    sequences, n_answer = [], []
    for i, (prompt, ex) in enumerate(zip(few_shot_prompts(task, k, seed), task.examples)):
        context, continuation = encode_pair(tokenizer, prompt, task.target_delimiter + ex.target)
        if not continuation:
            raise BackpackError(f"{task.name}: example {i}: gold continuation "
                                f"{task.target_delimiter + ex.target!r} encodes to no tokens")
        ids = _truncate(context, continuation, max_length)
        sequences.append(ids)
        n_answer.append(len(continuation))
    pad = pad_id(tokenizer)
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        ids, mask, _ = pad_batch(batch, pad, "right")
        answer = torch.zeros_like(mask, dtype=torch.bool)
        for row, (seq, n) in enumerate(zip(batch, n_answer[start:start + batch_size])):
            answer[row, len(seq) - n:len(seq)] = True
        yield ids, mask, answer


# ---------------------------------------------------------------------------------------------------- scoring

@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 8,
                          padding_side: str = "right", progress: bool = False) -> list[tuple[float, int]]:
    """[(log p(continuation | context) in nats, continuation tokens)] for (context, continuation) pairs, batched.

    Padding on either side gives the same numbers: the attention mask hides pad tokens and position ids count only
    real tokens."""
    limit = max_positions(model)
    encoded = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise BackpackError(f"continuation {continuation!r} encodes to no tokens")
        encoded.append((_truncate(ctx, cont, limit), len(cont)))
    device = next(model.parameters()).device
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    if padding_side == "left" and not takes_positions:
        raise BackpackError(f"{type(model).__name__} takes no position_ids; score with right padding")
    pad = pad_id(tokenizer)
    out: list[tuple[float, int]] = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="scoring", unit="batch", disable=not progress):
        chunk = encoded[start:start + batch_size]
        ids, mask, positions = pad_batch([seq for seq, _ in chunk], pad, padding_side)
        kwargs = {"position_ids": positions.to(device)} if takes_positions else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]  # [b, pos-1]
        for row, (seq, n_cont) in enumerate(chunk):
            end = ids.shape[1] if padding_side == "left" else len(seq)  # one past the last real token
            out.append((float(logp[row, end - 1 - n_cont:end - 1].sum()), n_cont))
    return out


def _normalization(length_normalize: str | bool | None) -> str:
    if length_normalize is True:
        return "char"
    if length_normalize in (False, None):
        return "none"
    if length_normalize not in NORMALIZATIONS:
        raise BackpackError(f"length normalisation must be one of {', '.join(NORMALIZATIONS)}, got {length_normalize!r}")
    return length_normalize


def _normalized(logprobs, tokens, chars, norm: str) -> np.ndarray:
    """Per-choice scores: summed log-prob, per token, or per character."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    if norm == "token":
        return logprobs / np.maximum(np.asarray(tokens), 1)
    if norm == "char":
        return logprobs / np.maximum(np.asarray(chars), 1)
    return logprobs


def evaluate_task(model, tokenizer, task: Task, k: int = 0, seed: int = 0, batch_size: int = 8,
                  length_normalize: str | bool = "none", max_new_tokens: int | None = None,
                  padding_side: str = "right", progress: bool = False) -> TaskResult:
    """Accuracy of `model` on `task` with k-shot prompts (module docstring: prompts, scores, normalisation).

    length_normalize: "none" (summed log-prob), "token" (per token), "char" or True (per character, lm-eval's
    acc_norm). Generation tasks use greedy decoding (left padding) for `max_new_tokens` (default: the longest
    answer's tokens + 2) and exact match. padding_side: of the scoring batches (equal results either way).
    progress: a tqdm bar over batches.
    """
    norm = _normalization(length_normalize)
    if not task.examples:
        raise BackpackError(f"task {task.name!r} has no examples")
    if batch_size < 1:
        raise BackpackError(f"batch size must be >= 1, got {batch_size}")
    prompts = few_shot_prompts(task, k, seed)
    was_training = model.training
    model.eval()
    try:
        if task.kind == "multiple_choice":
            result = _evaluate_choices(model, tokenizer, task, prompts, batch_size, norm, padding_side, progress)
        else:
            result = _evaluate_generation(model, tokenizer, task, prompts, batch_size, max_new_tokens, progress)
    finally:
        model.train(was_training)
    result.k, result.seed, result.length_normalize = k, seed, norm
    return result


def _evaluate_choices(model, tokenizer, task, prompts, batch_size, norm, padding_side, progress) -> TaskResult:
    pairs = [(p, task.target_delimiter + c) for p, ex in zip(prompts, task.examples) for c in ex.choices]
    scored = continuation_logprobs(model, tokenizer, pairs, batch_size, padding_side, progress)
    logprobs, tokens, chars, picks = [], [], [], []
    at = 0
    for ex in task.examples:
        rows = scored[at:at + len(ex.choices)]
        at += len(ex.choices)
        logprobs.append([lp for lp, _ in rows])
        tokens.append([n for _, n in rows])
        chars.append([len(c) for c in ex.choices])
        picks.append(int(np.argmax(_normalized(logprobs[-1], tokens[-1], chars[-1], norm))))
    correct = [p == ex.gold for p, ex in zip(picks, task.examples)]
    return TaskResult(
        task=task.name, kind=task.kind, k=0, seed=0, length_normalize=norm, accuracy=float(np.mean(correct)),
        n=len(correct), chance=task.chance, correct=correct, predictions=picks, choice_logprobs=logprobs,
        choice_tokens=tokens, choice_chars=chars, golds=[ex.gold for ex in task.examples],
    )


@torch.no_grad()
def _evaluate_generation(model, tokenizer, task, prompts, batch_size, max_new_tokens, progress) -> TaskResult:
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(task.target_delimiter + ex.answer)) for ex in task.examples) + 2
    limit = max_positions(model)
    budget = None if limit is None else limit - max_new_tokens
    if budget is not None and budget < 1:
        raise BackpackError(f"max_new_tokens={max_new_tokens} leaves no room in the model's {limit} positions")
    encoded = [tokenizer.encode(p) or [_prefix_id(tokenizer)] for p in prompts]
    encoded = [ids[-budget:] if budget else ids for ids in encoded]
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    texts: list[str] = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="generating", unit="batch", disable=not progress):
        ids, mask, _ = pad_batch(encoded[start:start + batch_size], pad, "left")
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
        for row in out[:, ids.shape[1]:]:
            texts.append(tokenizer.decode(row.tolist(), skip_special_tokens=True))
    # the prompt ends at the context, so a model continuing as its demonstrations do writes T + answer: drop that T
    # (the same continuation importance scores), then stop at the few-shot delimiter
    predictions = [_cut(_drop_prefix(text, task.target_delimiter), task.fewshot_delimiter) for text in texts]
    correct = [pred.strip() == ex.answer.strip() for pred, ex in zip(predictions, task.examples)]
    return TaskResult(task=task.name, kind=task.kind, k=0, seed=0, length_normalize="none",
                      accuracy=float(np.mean(correct)), n=len(correct), chance=0.0, correct=correct,
                      predictions=predictions)


def _drop_prefix(text: str, prefix: str) -> str:
    """`text` without a leading `prefix` (unchanged if it does not start with it)."""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _cut(text: str, stop: str) -> str:
    """Text up to the first stop sequence (the model starting the next demonstration)."""
    return text.split(stop)[0] if stop else text
