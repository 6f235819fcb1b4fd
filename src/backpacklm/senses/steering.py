"""Topic steering experiments: generate with sense re-weighting (Backpack) or PPLM-BoW (Transformer) per topic and
strength, score every setting (steering_metrics), and tabulate method x strength side by side."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..checks import check_fields
from ..errors import BackpackError
from ..sampling import encode_prompt
from .pplm import PPLMSettings, generate_pplm, require_transformer
from .projection import require_backpack
from .steering_metrics import (Scorer, in_vocab_share, mauve_score, perplexity_of_generations, semantic_success,
                               text_features, topic_word_scorer)
from .topic import STRENGTHS, Generation, Topic, generate_with_topic, sense_topic_scores, topic_weights

METHODS = ("sense", "pplm")
PPLM_STEP_SIZES = (0.0, 0.01, 0.02, 0.03)  # PPLM's step size at strengths 0..3 (ours; 0 = unsteered sampling)


@dataclass
class SamplingSettings:
    """Shared by both methods so their rows differ only in the intervention."""

    length: int = 40  # new tokens per sample
    samples: int = 4  # samples per prompt
    temperature: float = 1.0
    top_k: int = 10  # PPLM's default
    seed: int = 0

    def __post_init__(self):
        check_fields(self, length="positive_int", samples="positive_int", temperature="positive_float",
                     top_k="non_negative_int", seed="seed")


@dataclass
class SteeringRow:
    """One (method, topic, strength): the metrics over all prompts x samples, and a few example texts."""

    method: str
    topic: str
    strength: int
    setting: str  # the weights (w0, w1, w2, rest) or the PPLM step size
    samples: int
    success: float  # share of generations judged on-topic
    in_vocab_share: float  # share of generated tokens that are topic target ids
    perplexity: float  # of the generated tokens under the reference model
    mauve: float | None  # against the reference texts, when given
    seconds_per_sample: float
    examples: list[str] = field(default_factory=list)


@dataclass
class SteeringReport:
    rows: list[SteeringRow]
    settings: dict

    def to_dict(self) -> dict:
        return {"settings": self.settings, "summary": self.summary(), "rows": [asdict(r) for r in self.rows]}

    def summary(self) -> list[dict]:
        """Method x strength, metrics averaged over topics (perplexity: geometric mean)."""
        out = []
        for method in dict.fromkeys(r.method for r in self.rows):
            for strength in sorted({r.strength for r in self.rows if r.method == method}):
                rows = [r for r in self.rows if r.method == method and r.strength == strength]
                mauves = [r.mauve for r in rows if r.mauve is not None]
                out.append({
                    "method": method, "strength": strength, "setting": rows[0].setting, "topics": len(rows),
                    "success": float(np.mean([r.success for r in rows])),
                    "in_vocab_share": float(np.mean([r.in_vocab_share for r in rows])),
                    "perplexity": float(math.exp(np.mean([math.log(r.perplexity) for r in rows]))),
                    "mauve": float(np.mean(mauves)) if mauves else None,
                    "seconds_per_sample": float(np.mean([r.seconds_per_sample for r in rows])),
                })
        return out

    def markdown(self) -> str:
        lines = ["| method | strength | setting | success | in-vocab share | perplexity | MAUVE | s / sample |",
                 "|---|---|---|---|---|---|---|---|"]
        for s in self.summary():
            mauve = "-" if s["mauve"] is None else f"{s['mauve']:.3f}"
            lines.append(f"| {s['method']} | {s['strength']} | {s['setting']} | {s['success']:.3f} | "
                         f"{s['in_vocab_share']:.4f} | {s['perplexity']:.2f} | {mauve} | {s['seconds_per_sample']:.3f} |")
        return "\n".join(lines)


def steered_generations(model, tokenizer, topic: Topic, strength: int, method: str, prompts: Sequence[str],
                        sampling: SamplingSettings, pplm: PPLMSettings | None = None,
                        pplm_step_sizes: Sequence[float] = PPLM_STEP_SIZES, scores=None) -> tuple[list[Generation], str]:
    """One Generation per prompt (sampling.samples continuations each), and the setting's label."""
    _check_setting(method, strength, pplm_step_sizes)
    vocab = model.config.vocab_size
    if method == "sense":
        scores = sense_topic_scores(model, topic.target_ids) if scores is None else scores
        delta = topic_weights(scores, strength)
        setting = "weights " + "/".join(f"{w:g}" for w in STRENGTHS[strength])
        run = lambda ids, seed: generate_with_topic(model, ids, delta, sampling.length, sampling.samples,
                                                    sampling.temperature, sampling.top_k, seed=seed)
    else:
        settings = PPLMSettings(**{**asdict(pplm or PPLMSettings()), "step_size": float(pplm_step_sizes[strength])})
        setting = f"step {settings.step_size:g}"
        run = lambda ids, seed: generate_pplm(model, ids, topic.target_ids, sampling.length, settings, sampling.samples,
                                              sampling.temperature, sampling.top_k, seed=seed)
    generations = [run(encode_prompt(tokenizer, prompt, vocab), sampling.seed + i) for i, prompt in enumerate(prompts)]
    return generations, setting


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise BackpackError(f"method must be one of {', '.join(METHODS)}, not {method!r}")


def _check_setting(method: str, strength: int, pplm_step_sizes: Sequence[float]) -> None:
    _check_method(method)
    _check_strength(method, strength, pplm_step_sizes)


def _check_strength(method: str, strength: int, pplm_step_sizes: Sequence[float]) -> None:
    if strength not in STRENGTHS:
        raise BackpackError(f"strength must be one of {sorted(STRENGTHS)}, not {strength}")
    if method == "pplm" and strength >= len(pplm_step_sizes):
        raise BackpackError(f"no PPLM step size for strength {strength} (given: {list(pplm_step_sizes)})")


def _check_settings(models: dict, strengths: Sequence[int], pplm_step_sizes: Sequence[float], generations: int,
                    mauve_references: Sequence[str] | None) -> None:
    """BackpackError, before anything is generated, for a setting that would fail part-way through the run:
    methods and model kinds first, then the strengths."""
    for method, model in models.items():
        _check_method(method)
        if method == "sense":
            require_backpack(model, "sense re-weighting")
        else:
            require_transformer(model)
    for method in models:
        for strength in strengths:
            _check_strength(method, strength, pplm_step_sizes)
    if mauve_references is not None and (len(mauve_references) < 2 or generations < 2):
        raise BackpackError(f"MAUVE needs at least 2 reference texts and 2 generations per setting "
                            f"(given {len(mauve_references)} and {generations})")


def evaluate_steering(models: dict, tokenizer, topics: Sequence[Topic], strengths: Sequence[int],
                      prompts: Sequence[str], sampling: SamplingSettings | None = None,
                      pplm: PPLMSettings | None = None, pplm_step_sizes: Sequence[float] = PPLM_STEP_SIZES,
                      reference_model=None, scorer: Scorer | None = None, mauve_model=None,
                      mauve_references: Sequence[str] | None = None, examples: int = 3,
                      progress: bool = True) -> SteeringReport:
    """Run every method in `models` ({"sense": backpack, "pplm": transformer}) on every topic and strength.

    reference_model: scores perplexity (default: each method's own model, unsteered); it must share `tokenizer`.
    scorer: text -> on-topic (default: at least one topic word). MAUVE needs `mauve_references` (texts) and uses
    `mauve_model` (default: the reference model) for the features. progress: a bar over the settings on stderr."""
    sampling = sampling or SamplingSettings()
    prompts = list(prompts) or [""]
    _check_settings(models, strengths, pplm_step_sizes, len(prompts) * sampling.samples, mauve_references)
    for model in models.values():  # unknown words or ids fail here, before the progress bar starts
        for prompt in prompts:
            encode_prompt(tokenizer, prompt, model.config.vocab_size)
    if mauve_references is not None and mauve_model is None and reference_model is None:
        raise BackpackError("MAUVE needs a feature model: name a mauve model or a reference model")
    reference_features = None
    if mauve_references is not None:
        reference_features = text_features(mauve_model or reference_model, tokenizer, mauve_references)
    rows, scores = [], {}  # scores: one [V, k] table per topic, shared by its strengths
    jobs = [(m, t, s) for m in models for t in topics for s in strengths]
    for method, topic, strength in tqdm(jobs, desc="steering", unit="setting", disable=not progress):
        model = models[method]
        if method == "sense" and id(topic) not in scores:
            scores[id(topic)] = sense_topic_scores(model, topic.target_ids)
        generations, setting = steered_generations(model, tokenizer, topic, strength, method, prompts, sampling,
                                                   pplm, pplm_step_sizes, scores.get(id(topic)))
        texts = [tokenizer.decode(ids) for g in generations for ids in g.new_ids]
        full = [tokenizer.decode(g.prompt_ids + ids) for g in generations for ids in g.new_ids]
        judge = scorer or topic_word_scorer(topic.words)
        mauve = None
        if reference_features is not None:
            mauve = mauve_score(reference_features, text_features(mauve_model or reference_model, tokenizer, full))
        rows.append(SteeringRow(
            method=method, topic=topic.name, strength=strength, setting=setting, samples=len(texts),
            success=semantic_success(texts, judge),
            in_vocab_share=in_vocab_share([ids for g in generations for ids in g.new_ids], topic.target_ids),
            perplexity=perplexity_of_generations(reference_model or model, generations),
            mauve=mauve, seconds_per_sample=sum(g.seconds for g in generations) / len(texts),
            examples=full[:examples],
        ))
    settings = {"strengths": list(strengths), "prompts": prompts, "sampling": asdict(sampling),
                "pplm": asdict(pplm or PPLMSettings()), "pplm_step_sizes": list(pplm_step_sizes),
                "topics": [t.to_dict() for t in topics]}
    return SteeringReport(rows=rows, settings=settings)


def plot_steering(report: SteeringReport, path) -> None:
    """PNG: in-vocabulary share and perplexity against strength, one line per method."""
    from ..plots import plt, save_figure

    summary = report.summary()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for method in dict.fromkeys(s["method"] for s in summary):
        rows = [s for s in summary if s["method"] == method]
        for ax, key in zip(axes, ("in_vocab_share", "perplexity")):
            ax.plot([r["strength"] for r in rows], [r[key] for r in rows], marker="o", label=method)
    for ax, title in zip(axes, ("topic in-vocabulary share", "perplexity (reference model)")):
        ax.set_xlabel("strength")
        ax.set_title(title)
        ax.legend()
    save_figure(fig, path)
