"""Lexical similarity benchmark (Hewitt et al. 2023, Sec. 5.1, Table 4): Spearman correlation between human
similarity ratings of word pairs and similarities read off a model's embeddings and sense vectors.

File formats read (CRLF line ends tolerated):
    3-column       w1<TAB>w2<TAB>score (also space-, comma- or ';'-separated), no header
    SimLex-999     original TSV with a header line, score in the 4th column (word1 word2 POS SimLex999 ...)
    SimVerb-3500   original TSV, word1 word2 POS score relation (score in the 4th column)
    RG-65          w1;w2;score
    WordSim-353    CSV with a header "Word 1,Word 2,Human (mean)", or 3-column
    MEN            "w1 w2 score" (natural form) or "w1-n w2-n score" (lemma form, the -pos suffix is dropped)
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from ..data.prepare import read_document
from ..errors import BackpackError
from .words import word_ids

POS_SUFFIX = re.compile(r"-[nvaj]$")


@dataclass
class WordPairs:
    """A gold set: pairs of words with a human similarity score each."""

    name: str
    pairs: list[tuple[str, str]]
    scores: list[float]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _split(line: str) -> list[str]:
    for sep in ("\t", ";", ","):
        if sep in line:
            return [part.strip() for part in line.split(sep)]
    return line.split()


def load_pairs(path: str | Path, name: str | None = None) -> WordPairs:
    """Read any of the formats in the module docstring; a malformed line is a one-line error naming file and line."""
    path = Path(path)
    text = read_document(path)
    pairs, scores = [], []
    for number, raw in enumerate(text.splitlines(), start=1):  # splitlines drops \r\n and \n alike
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = _split(line)
        if len(fields) >= 4 and _number(fields[2]) is None and _number(fields[3]) is not None:
            score = _number(fields[3])  # SimLex-999 / SimVerb-3500: word1 word2 POS score ...
        elif len(fields) >= 3:
            score = _number(fields[2])
        else:
            raise BackpackError(f"{path}:{number}: expected 'word1 word2 score', got {raw.strip()[:60]!r}")
        if score is None:
            if not pairs and number == _first_content_line(text) and any(ch.isalpha() for ch in fields[2]):
                continue  # a header line (SimLex-999, WordSim-353 CSV): a column name where the score would be
            raise BackpackError(f"{path}:{number}: no numeric similarity score in {raw.strip()[:60]!r}")
        if not math.isfinite(score):
            raise BackpackError(f"{path}:{number}: the similarity score is not a finite number in {raw.strip()[:60]!r}")
        a, b = (POS_SUFFIX.sub("", w) for w in fields[:2])
        if not a or not b:
            raise BackpackError(f"{path}:{number}: empty word in {raw.strip()[:60]!r}")
        pairs.append((a, b))
        scores.append(score)
    if not pairs:
        raise BackpackError(f"{path}: no word pairs in the file")
    return WordPairs(name=name or path.stem, pairs=pairs, scores=scores)


def _first_content_line(text: str) -> int:
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip() and not raw.strip().startswith("#"):
            return number
    return 0


# Named loaders for the standard sets: all formats go through `load_pairs`, which detects the layout per line.
def load_simlex(path) -> WordPairs:
    return load_pairs(path, "SimLex-999")


def load_simverb(path) -> WordPairs:
    return load_pairs(path, "SimVerb-3500")


def load_rg65(path) -> WordPairs:
    return load_pairs(path, "RG-65")


def load_ws353(path) -> WordPairs:
    return load_pairs(path, "WS-353")


def load_men(path) -> WordPairs:
    return load_pairs(path, "MEN")


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1)


def pair_scores(embedding_a, embedding_b, senses_a=None, senses_b=None) -> dict[str, float]:
    """Every similarity of Table 4 for one pair. embedding_*: [d] rows of E; senses_*: [k, d] or None.

    embedding: cos(E_a, E_b); senses_concat: cos of all k senses concatenated; sim_min / sim_max:
    min / max over l of cos(C_l(a), C_l(b)) (matched senses); kxk_min / kxk_max: over all k x k pairs (l, l');
    sense_l: cos(C_l(a), C_l(b)).
    """
    scores = {"embedding": float(_cos(embedding_a, embedding_b))}
    if senses_a is None:
        return scores
    matched = _cos(senses_a, senses_b)  # [k]
    every = _cos(senses_a.unsqueeze(1), senses_b.unsqueeze(0))  # [k, k]
    scores.update(senses_concat=float(_cos(senses_a.flatten(), senses_b.flatten())),
                  sim_min=float(matched.min()), sim_max=float(matched.max()),
                  kxk_min=float(every.min()), kxk_max=float(every.max()))
    scores.update({f"sense_{l}": float(v) for l, v in enumerate(matched)})
    return scores


MIN_PAIRS = 10  # fewer covered pairs: no rho (any 2 points correlate +-1; a handful swing by chance)


@dataclass
class LexsimResult:
    """Spearman rho per method on one gold set, over the pairs whose words are in the vocabulary (none below
    MIN_PAIRS covered pairs; None where rho is undefined: a method's or the gold scores are all equal)."""

    dataset: str
    n_pairs: int
    n_covered: int
    spearman: dict[str, float | None]
    skipped_words: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class WordVectors:
    """Per-word embedding row [d] and, for a Backpack, sense vectors [k, d]; multi-token words averaged or first."""

    def __init__(self, model, tokenizer, how: str = "average"):
        self.model, self.tokenizer, self.how = model, tokenizer, how
        self.is_backpack = getattr(model.config, "model_type", None) == "backpack"
        self.embedding = model.get_input_embeddings().weight.detach()
        self.cache: dict[str, tuple | None] = {}

    @torch.no_grad()
    def __call__(self, word: str):
        """(embedding [d], senses [k, d] or None), or None when the word is not in the vocabulary."""
        if word not in self.cache:
            try:
                ids = word_ids(self.tokenizer, word, vocab_size=self.embedding.shape[0])
            except BackpackError:
                self.cache[word] = None
                return None
            ids = ids[:1] if self.how == "first" else ids
            index = torch.tensor(ids, device=self.embedding.device)
            embedding = self.embedding[index].float().mean(0)
            senses = self.model.token_senses(index).float().mean(0) if self.is_backpack else None
            self.cache[word] = (embedding, senses)
        return self.cache[word]


def lexical_similarity(model, tokenizer, gold: WordPairs, how: str = "average",
                       vectors: WordVectors | None = None) -> LexsimResult:
    """Spearman rho (scipy) of every method's similarity against the gold scores, on the pairs covered."""
    from scipy.stats import ConstantInputWarning, spearmanr

    vectors = vectors or WordVectors(model, tokenizer, how)
    rows, gold_scores, skipped = [], [], set()
    for (a, b), score in zip(gold.pairs, gold.scores):
        va, vb = vectors(a), vectors(b)
        if va is None or vb is None:
            skipped.update(w for w, v in ((a, va), (b, vb)) if v is None)
            continue
        rows.append(pair_scores(va[0], vb[0], va[1], vb[1]))
        gold_scores.append(score)
    spearman = {}
    if len(rows) >= MIN_PAIRS:
        for method in rows[0]:
            with warnings.catch_warnings():  # a constant column: rho is NaN, reported as None
                warnings.simplefilter("ignore", ConstantInputWarning)
                rho = float(spearmanr([r[method] for r in rows], gold_scores).statistic)
            spearman[method] = None if math.isnan(rho) else round(rho, 4)  # NaN: constant scores
    return LexsimResult(gold.name, len(gold.pairs), len(rows), spearman, sorted(skipped))


def markdown_table(results: list[LexsimResult]) -> str:
    """Datasets x methods, Spearman rho x 100 as in the paper, with the pairs covered ("-": too few pairs,
    "n/a": rho undefined)."""
    if not results:
        return ""
    methods = list(dict.fromkeys(m for r in results for m in r.spearman))
    lines = ["| dataset | pairs covered | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for r in results:
        cells = ["-" if m not in r.spearman else "n/a" if r.spearman[m] is None else f"{100 * r.spearman[m]:.1f}"
                 for m in methods]
        lines.append(f"| {r.dataset} | {r.n_covered}/{r.n_pairs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
