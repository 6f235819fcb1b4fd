"""Quality of gist models (Mu et al. 2023, sec. 4): ROUGE-L and exact match of greedy completions, per split.

ROUGE-L is the `rouge_score` package's F-measure with Porter stemming, averaged over examples, in points (0-100).
Gist models generate through the gist cache (exactly equal to the uncached model, see cache.py); pos_control and
neg_control models generate from the whole prompt under their own masks. Decoder-only and encoder-decoder (T5) alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from rouge_score import rouge_scorer
from tqdm import tqdm

from ..errors import BackpackError
from ..model.loading import load_model
from .cache import (SamplingConfig, compress, decode, generate_from_compressed, num_gists_of, prefill_uncached,
                    prompt_ids)
from .data import load_examples
from .layout import GistExample, decode_completion, gist_token_id


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (stemmed), in points."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return 100.0 * sum(scores) / max(len(scores), 1)


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Percentage of predictions equal to their reference after stripping surrounding whitespace."""
    hits = [p.strip() == r.strip() for p, r in zip(predictions, references)]
    return 100.0 * sum(hits) / max(len(hits), 1)


def predict(model, tokenizer, examples: list[GistExample], condition: str | None = None, num_gists: int | None = None,
            batch_size: int = 16, max_new_tokens: int = 64, cached: bool | None = None, progress: bool = False) -> list[str]:
    """Greedy completions. cached=None: through the gist cache for the gist condition, else from the whole prompt."""
    condition = condition or getattr(model.config, "gist_condition", "gist")
    k = num_gists_of(model, num_gists)
    cached = condition == "gist" if cached is None else cached
    gist_id, eos = gist_token_id(tokenizer), tokenizer.eos_token_id
    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    outputs: list[str] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="generate", unit="batch", disable=not progress):
        chunk = examples[start:start + batch_size]
        if cached:
            compressed = compress(model, tokenizer, [e.instruction for e in chunk], k, batch_size=batch_size)
            ids = generate_from_compressed(model, tokenizer, compressed, [e.input for e in chunk], sampling, condition)
        else:
            prompts = [prompt_ids(model, tokenizer, e, k) for e in chunk]
            state = prefill_uncached(model, prompts, gist_id, condition, eos, logits_to_keep=1)
            ids = decode(model, state, eos, sampling)
        outputs += [decode_completion(tokenizer, row) for row in ids]
    return outputs


@dataclass
class SplitScores:
    """Scores of one model on one split: rouge_l and exact_match in points (0-100) over n examples."""

    split: str
    n: int
    rouge_l: float
    exact_match: float
    samples: list[dict] = field(default_factory=list)  # the first few {instruction, input, output, prediction}


@dataclass
class GistEvaluation:
    """A model's scores per split, with its condition and k."""

    model: str
    condition: str
    num_gists: int
    splits: dict[str, SplitScores]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_gist(model_dir, data_files, batch_size: int = 16, max_new_tokens: int = 64,
                  max_examples: int | None = None, cached: bool | None = None, progress: bool = False,
                  model=None, tokenizer=None) -> GistEvaluation:
    """Evaluate a gist-trained model (a directory, or `model` + `tokenizer`) on Alpaca-format files.

    data_files: a path, a list of paths (split name = file stem), or {split: path}.
    """
    if model is None:
        model, tokenizer = load_model(model_dir)
    if tokenizer is None:
        raise BackpackError(f"{model_dir} has no tokenizer files")
    if isinstance(data_files, (str, Path)):
        data_files = [data_files]
    if not isinstance(data_files, dict):
        data_files = {Path(p).stem: p for p in data_files}
    condition = getattr(model.config, "gist_condition", "gist")
    splits = {}
    for split, path in data_files.items():
        examples = load_examples(path)[:max_examples]
        predictions = predict(model, tokenizer, examples, condition, None, batch_size, max_new_tokens, cached, progress)
        references = [e.output for e in examples]
        samples = [{**asdict(e), "prediction": p} for e, p in zip(examples[:5], predictions)]
        splits[split] = SplitScores(split, len(examples), rouge_l(predictions, references),
                                    exact_match(predictions, references), samples)
    return GistEvaluation(str(model_dir), condition, num_gists_of(model), splits)


def quality_table(evaluations: list[GistEvaluation]) -> str:
    """Markdown: one row per model (condition, k), ROUGE-L / exact match per split."""
    splits = list(dict.fromkeys(s for e in evaluations for s in e.splits))
    lines = ["| condition | k | " + " | ".join(f"{s} ROUGE-L | {s} EM" for s in splits) + " |",
             "|---|---|" + "---|---|" * len(splits)]
    for e in evaluations:
        cells = [f"{e.splits[s].rouge_l:.1f} | {e.splits[s].exact_match:.1f}" if s in e.splits else "- | -" for s in splits]
        lines.append(f"| {e.condition} | {e.num_gists} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
