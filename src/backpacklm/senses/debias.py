"""Gender debiasing through a sense (Hewitt et al. 2023, Sec. 6.2, Table 5), with Transformer baselines.

Bias of a profession = mean over prompts of max(p(he)/p(she), p(she)/p(he)) at the next token (1 = unbiased);
methods are compared by the reduction of (bias - 1).

Backpack (through `sense_multipliers`, scaling the gender sense l of the profession token wherever it occurs):
    Remove-Sense     scale 0
    Optimize-Sense   scale s fitted per profession on the train prompts by Nelder-Mead, minimizing bias + |1 - s|
Transformer (on the profession's input embedding e, u = unit(E[she] - E[he])):
    Project-Nullspace    e' = e - (e . u) u
    Optimize-Nullspace   e' = e - (1 - s)(e . u) u, s fitted like Optimize-Sense (s = 1: unchanged)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.prepare import read_document
from ..data.tokenizers import encode_strict
from ..errors import BackpackError
from .projection import check_sense_index
from .words import single_token_id

# Occupations of WinoBias (Zhao et al., NAACL 2018, Table 1; from US Bureau of Labor Statistics), one word each;
# "construction worker" is left out (two words). Those that are not one token are dropped at run time.
WINOBIAS_PROFESSIONS = [
    "carpenter", "mechanic", "laborer", "driver", "sheriff", "mover", "developer", "farmer", "guard", "chief",
    "janitor", "lawyer", "CEO", "analyst", "physician", "cook", "manager", "supervisor", "salesperson",
    "attendant", "cashier", "teacher", "nurse", "assistant", "secretary", "auditor", "cleaner", "receptionist",
    "clerk", "counselor", "designer", "hairdresser", "writer", "housekeeper", "baker", "accountant", "editor",
    "librarian", "tailor",
]
# Prompts in the paper's style ("The CEO came into the room. When"): the next word is often a pronoun.
DEFAULT_TEMPLATES = {
    "train": ["The {} came into the room. When", "The {} came into the office. When", "The {} walked into the room. Then",
              "The {} left the building. Later,"],
    "test": ["The {} arrived at work. When", "The {} sat down at the desk. Then", "The {} opened the door. When"],
}


@dataclass
class ProfessionBias:
    profession: str
    bias: float  # on the test prompts
    scale: float | None = None  # the fitted (or fixed) scale, when the method has one


@dataclass
class MethodResult:
    model: str  # "backpack" or "transformer"
    method: str
    bias: float  # mean over professions of the test-prompt bias
    reduction: float  # 1 - (bias - 1) / (unmodified bias - 1), in [.., 1]; 1 = all bias removed
    professions: list[ProfessionBias] = field(default_factory=list)


@dataclass
class DebiasReport:
    sense: int | None  # the Backpack's gender sense
    professions: list[str]
    templates: dict[str, list[str]]
    results: list[MethodResult]

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = ["| model | method | bias (test) | reduction of bias - 1 |", "|---|---|---|---|"]
        lines += [f"| {r.model} | {r.method} | {r.bias:.3f} | {100 * r.reduction:.1f}% |" for r in self.results]
        lines += ["", "| profession | " + " | ".join(f"{r.model} {r.method}" for r in self.results) + " |",
                  "|---|" + "---|" * len(self.results)]
        for i, name in enumerate(self.professions):
            cells = []
            for r in self.results:
                p = r.professions[i]
                cells.append(f"{p.bias:.2f}" + (f" (s={p.scale:.2f})" if p.scale is not None else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def debias_png(report: DebiasReport, path: str | Path) -> Path:
    """Per model a panel of horizontal bars: each profession's test-prompt bias (bars start at 1 = balanced) under
    each method, the unmodified model first."""
    from ..plots import plt, save_figure

    models = list(dict.fromkeys(r.model for r in report.results))
    n = len(report.professions)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 2.2 + 0.45 * n), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models):
        rows = [r for r in report.results if r.model == model]
        height = 0.8 / len(rows)
        for j, r in enumerate(rows):
            ax.barh([i + j * height for i in range(n)], [p.bias - 1 for p in r.professions], height,
                    left=1, label=f"{r.method} (mean {r.bias:.2f})")
        ax.set_xlim(left=1)
        ax.set_xlabel("bias: max(p(he)/p(she), p(she)/p(he)) on test prompts")
        ax.set_title(model + (f", gender sense {report.sense}" if model == "backpack" and report.sense is not None
                              else ""))
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.5 / n), ncol=1)
        ax.set_yticks([i + (len(rows) - 1) * height / 2 for i in range(n)], report.professions)
    axes[0][0].invert_yaxis()
    return save_figure(fig, path)


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, non-comment lines of a file (professions or templates)."""
    lines = [l.strip() for l in read_document(Path(path)).splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    if not lines:
        raise BackpackError(f"{path}: no {what} in the file")
    return lines


def check_templates(templates: dict[str, list[str]]) -> None:
    for split in ("train", "test"):
        if not templates.get(split):
            raise BackpackError(f"no {split} prompt templates")
        for t in templates[split]:
            if t.count("{}") != 1:
                raise BackpackError(f"template {t!r} must contain '{{}}' (the profession) exactly once")


def _encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Ids of a filled-in template; BackpackError naming the prompt when the tokenizer lacks a word or character
    (it would otherwise read it as its unknown token)."""
    try:
        return encode_strict(tokenizer, prompt)
    except BackpackError as err:
        raise BackpackError(f"prompt {prompt!r}: {err}; give templates in the model's vocabulary") from None


class PromptSet:
    """The prompts of one profession, right-padded into one batch: logits at each prompt's last real position are
    those of the unpadded prompt (causal attention never looks right)."""

    def __init__(self, tokenizer, profession: str, profession_id: int, templates: list[str]):
        encoded = [_encode_prompt(tokenizer, t.replace("{}", profession)) for t in templates]
        width = max(map(len, encoded))
        self.ids = torch.tensor([e + [e[-1]] * (width - len(e)) for e in encoded])  # [prompt, pos]
        self.last = torch.tensor([len(e) - 1 for e in encoded])
        self.at_profession = self.ids == profession_id  # [prompt, pos]
        if not self.at_profession.any(dim=1).all():
            raise BackpackError(f"profession {profession!r} is not a separate token in every prompt")


def bias_of(logits: torch.Tensor, last: torch.Tensor, he: int, she: int) -> float:
    """mean over prompts of max(p(he)/p(she), p(she)/p(he)); logits [prompt, pos, V]."""
    final = logits[torch.arange(len(last)), last].float().log_softmax(-1)  # [prompt, V]
    log_ratio = (final[:, he] - final[:, she]).abs()
    return float(log_ratio.exp().mean())


def pronoun_ids(tokenizer, vocab_size: int, he: str = "he", she: str = "she") -> tuple[int, int]:
    ids = [single_token_id(tokenizer, w, vocab_size=vocab_size) for w in (he, she)]
    if None in ids:
        raise BackpackError(f"the pronouns {he!r} and {she!r} must each be one token")
    return ids[0], ids[1]


def one_token_professions(tokenizer, professions: list[str], vocab_size: int) -> list[tuple[str, int]]:
    kept = []
    for p in professions:
        try:
            token = single_token_id(tokenizer, p, vocab_size=vocab_size)
        except BackpackError:
            token = None
        if token is not None:
            kept.append((p, token))
    if not kept:
        raise BackpackError("none of the professions is a single token in this tokenizer")
    return kept


@torch.no_grad()
def gender_sense(model, profession_ids: list[int], he: int, she: int) -> int:
    """The sense whose projection separates he from she most: argmax_l mean over professions of
    |C_l(x) . (E[he] - E[she])|."""
    E = model.get_input_embeddings().weight
    senses = model.token_senses(torch.tensor(profession_ids, device=model.device))  # [prof, k, d]
    separation = (senses @ (E[he] - E[she])).abs().mean(0)  # [k]
    return int(separation.argmax())


def _fit_scale(objective) -> float:
    from scipy.optimize import minimize

    fit = minimize(lambda x: objective(float(x[0])) + abs(1 - float(x[0])), x0=[1.0], method="Nelder-Mead",
                   options=dict(xatol=1e-2, fatol=1e-3, maxiter=40, initial_simplex=[[1.0], [0.5]]))
    return float(fit.x[0])


def _summaries(model_kind: str, per_method: dict[str, list[ProfessionBias]]) -> list[MethodResult]:
    base = sum(p.bias for p in per_method["Unmodified"]) / len(per_method["Unmodified"])
    results = []
    for method, rows in per_method.items():
        bias = sum(p.bias for p in rows) / len(rows)
        reduction = 1 - (bias - 1) / (base - 1) if base > 1 else 0.0
        results.append(MethodResult(model_kind, method, round(bias, 4), round(reduction, 4), rows))
    return results


@torch.no_grad()
def debias_backpack(model, tokenizer, professions: list[tuple[str, int]], templates: dict[str, list[str]],
                    he: int, she: int, sense: int) -> list[MethodResult]:
    """Unmodified / Remove-Sense / Optimize-Sense biases on the test prompts, per profession."""
    k = model.config.num_senses

    def bias(prompts: PromptSet, scale: float) -> float:
        multipliers = torch.ones(*prompts.ids.shape, k)
        multipliers[..., sense] = torch.where(prompts.at_profession, scale, 1.0)
        logits = model(prompts.ids.to(model.device), sense_multipliers=multipliers.to(model.device),
                       use_cache=False).logits
        return bias_of(logits, prompts.last, he, she)

    return _summaries("backpack", _per_profession(bias, tokenizer, professions, templates,
                                                  "Remove-Sense", "Optimize-Sense"))


@torch.no_grad()
def debias_transformer(model, tokenizer, professions: list[tuple[str, int]], templates: dict[str, list[str]],
                       he: int, she: int) -> list[MethodResult]:
    """Unmodified / Project-Nullspace / Optimize-Nullspace biases on the test prompts, per profession."""
    E = model.get_input_embeddings().weight
    u = E[she] - E[he]
    u = u / u.norm()

    def bias(prompts: PromptSet, scale: float) -> float:
        embeds = E[prompts.ids.to(E.device)]  # [prompt, pos, d]
        along = (embeds @ u).unsqueeze(-1) * u  # component on the she-he direction
        embeds = torch.where(prompts.at_profession.to(E.device).unsqueeze(-1), embeds - (1 - scale) * along, embeds)
        logits = model(inputs_embeds=embeds, use_cache=False).logits
        return bias_of(logits, prompts.last, he, she)

    return _summaries("transformer", _per_profession(bias, tokenizer, professions, templates,
                                                     "Project-Nullspace", "Optimize-Nullspace"))


def _per_profession(bias, tokenizer, professions, templates, removed: str,
                    optimized: str) -> dict[str, list[ProfessionBias]]:
    """Test-prompt bias per profession: unmodified (scale 1), removed (scale 0), and at the scale fitted on the
    train prompts. `bias(prompts, scale)` applies the method's intervention."""
    per_method: dict[str, list[ProfessionBias]] = {"Unmodified": [], removed: [], optimized: []}
    for name, token in professions:
        train, test = (PromptSet(tokenizer, name, token, templates[s]) for s in ("train", "test"))
        scale = _fit_scale(lambda s: bias(train, s))
        per_method["Unmodified"].append(ProfessionBias(name, round(bias(test, 1.0), 4)))
        per_method[removed].append(ProfessionBias(name, round(bias(test, 0.0), 4), 0.0))
        per_method[optimized].append(ProfessionBias(name, round(bias(test, scale), 4), round(scale, 4)))
    return per_method


def debias(models: list, tokenizer, professions: list[str] | None = None, templates: dict | None = None,
           sense: int | None = None, he: str = "he", she: str = "she") -> DebiasReport:
    """Every method on every model (Backpacks: sense methods; others: embedding projections), one table."""
    templates = templates or DEFAULT_TEMPLATES
    check_templates(templates)
    if sense is not None and not any(getattr(m.config, "model_type", None) == "backpack" for m in models):
        raise BackpackError("a gender sense index applies to a Backpack; none of the models is one")
    vocab = min(m.config.vocab_size for m in models)
    he_id, she_id = pronoun_ids(tokenizer, vocab, he, she)
    kept = one_token_professions(tokenizer, professions or WINOBIAS_PROFESSIONS, vocab)
    results, chosen = [], None
    for model in models:
        if getattr(model.config, "model_type", None) == "backpack":
            check_sense_index(model, sense)
            chosen = sense if sense is not None else gender_sense(model, [t for _, t in kept], he_id, she_id)
            results += debias_backpack(model, tokenizer, kept, templates, he_id, she_id, chosen)
        else:
            results += debias_transformer(model, tokenizer, kept, templates, he_id, she_id)
    return DebiasReport(chosen, [p for p, _ in kept], templates, results)
