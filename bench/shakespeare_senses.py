"""Issue 3, section 7: the sense methods on real text, a Backpack and a Transformer trained on Shakespeare (BPE).

Runs on two trained model directories (same tokenizer):
  - sense projections of a few words (top tokens per sense) and a words x senses heatmap PNG;
  - lexical similarity on SimLex-999, SimVerb-3500, WS-353 and RG-65 (../shared/data/lexsim), every Backpack method
    and the Transformer's embedding rows, Spearman x 100, next to the paper's Table 4;
  - gender debiasing (Remove-/Optimize-Sense on the Backpack, Project-/Optimize-Nullspace on the Transformer), with
    the WinoBias professions that are one token and with a list of occupations frequent in Shakespeare, next to the
    paper's Table 5.
Topic control on the same models is `bench/topic_control.py --part shakespeare` (PPLM is slow; kept separate).
Writes bench/results/shakespeare_senses.json, shakespeare_senses.md and shakespeare_senses.png.

Run:  .venv/bin/python bench/shakespeare_senses.py --backpack RUN/model --transformer RUN/model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import DEFAULT_DATA_DIR, save_result

from backpacklm.model.loading import load_model
from backpacklm.senses.debias import debias
from backpacklm.senses.lexsim import lexical_similarity, load_pairs, markdown_table
from backpacklm.senses.projection import format_projection, projection_heatmap, sense_projections

LEXSIM_FILES = {"SimLex-999": "EN-SIMLEX-999.txt", "SimVerb-3500": "EN-SimVerb-3500.txt",
                "WS-353": "EN-WS-353-ALL.txt", "RG-65": "EN-RG-65.txt"}
# Hewitt et al. 2023, Table 4 (Spearman; Backpack-Small and Transformer-124M trained on OpenWebText).
PAPER_TABLE_4 = {
    "Trnsf 124M (embedding)": {"SimLex-999": 0.478, "SimVerb-3500": 0.363, "RG-65": 0.634, "WS-353": 0.681},
    "Backpack Sim_12 (best single sense)": {"SimLex-999": 0.522, "SimVerb-3500": 0.471, "RG-65": 0.754, "WS-353": 0.749},
    "Backpack Sim_min": {"SimLex-999": 0.540, "SimVerb-3500": 0.471, "RG-65": 0.653, "WS-353": 0.607},
}
# Hewitt et al. 2023, Table 5 (bias ratio; reduction of bias - 1).
PAPER_TABLE_5 = [("transformer", "Unmodified", 7.02, 0.0), ("transformer", "Project-Nullspace", 6.72, 0.05),
                 ("transformer", "Optimize-Nullspace", 7.02, 0.0), ("backpack", "Unmodified", 4.34, 0.0),
                 ("backpack", "Remove-Sense", 2.88, 0.44), ("backpack", "Optimize-Sense", 2.16, 0.65)]
WORDS = ["king", "love", "sword", "heaven", "night", "death", "crown", "gold"]
# Occupations and roles that recur in the plays' text (not in stage directions only); gendered nouns (lord, lady,
# duke, queen) are left out: their pronoun is not a bias.
SHAKESPEARE_OCCUPATIONS = ["servant", "soldier", "messenger", "captain", "doctor", "nurse", "friar", "merchant",
                           "keeper", "porter", "herald", "tailor", "cook", "priest", "judge", "officer", "page",
                           "steward", "shepherd", "fool", "physician", "clown"]


def lexsim_part(backpack, transformer, tokenizer, lexsim_dir: Path) -> dict:
    rows, markdown = {}, []
    for name, file in LEXSIM_FILES.items():
        gold = load_pairs(lexsim_dir / file, name)
        ours = lexical_similarity(backpack, tokenizer, gold)
        base = lexical_similarity(transformer, tokenizer, gold)
        ours.spearman["transformer_embedding"] = base.spearman["embedding"]
        rows[name] = ours.to_dict()
        markdown.append(ours)
    return {"results": rows, "markdown": markdown_table(markdown), "paper_table_4": PAPER_TABLE_4}


def debias_part(backpack, transformer, tokenizer, professions: list[str] | None) -> dict:
    report = debias([backpack, transformer], tokenizer, professions)
    return report.to_dict() | {"markdown": report.markdown()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backpack", required=True, help="trained Backpack model directory")
    parser.add_argument("--transformer", required=True, help="trained Transformer model directory (same tokenizer)")
    parser.add_argument("--lexsim-dir", default=str(DEFAULT_DATA_DIR / "lexsim" / "eval-word-vectors"))
    parser.add_argument("--words", default=",".join(WORDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="shakespeare_senses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backpack, tokenizer = load_model(args.backpack)
    transformer, _ = load_model(args.transformer)
    started = time.perf_counter()

    projections = sense_projections(backpack, tokenizer, args.words.split(","), top=8)
    results_dir = Path(__file__).parent / "results"
    png = projection_heatmap(projections, results_dir / f"{args.out}.png")
    for p in projections:
        print(format_projection(p, top=6))

    lexsim = lexsim_part(backpack, transformer, tokenizer, Path(args.lexsim_dir))
    print("\n" + lexsim["markdown"])
    winobias = debias_part(backpack, transformer, tokenizer, None)
    print("\nWinoBias professions (one token):", ", ".join(winobias["professions"]) + "\n" + winobias["markdown"])
    shakespeare = debias_part(backpack, transformer, tokenizer, SHAKESPEARE_OCCUPATIONS)
    print("\nShakespeare occupations:", ", ".join(shakespeare["professions"]) + "\n" + shakespeare["markdown"])

    payload = {
        "models": {"backpack": str(args.backpack), "transformer": str(args.transformer)},
        "validation_loss": {arch: _val_loss(Path(p)) for arch, p in
                            (("backpack", args.backpack), ("transformer", args.transformer))},
        "projections": [p.to_dict() for p in projections], "heatmap": str(png),
        "lexsim": lexsim, "debias_winobias": winobias, "debias_shakespeare": shakespeare,
        "paper_table_5": PAPER_TABLE_5, "seconds": time.perf_counter() - started,
    }
    save_result(args.out, payload)
    (results_dir / f"{args.out}.md").write_text(
        "\n\n".join([lexsim["markdown"], winobias["markdown"], shakespeare["markdown"]]) + "\n", encoding="utf-8")


def _val_loss(model_dir: Path) -> float | None:
    """The last validation loss in the run's metrics.jsonl (the model directory's parent), if there is one."""
    metrics = model_dir.resolve().parent / "metrics.jsonl"
    if not metrics.exists():
        return None
    losses = [json.loads(line).get("val_loss") for line in metrics.read_text(encoding="utf-8").splitlines()]
    losses = [x for x in losses if x is not None]
    return losses[-1] if losses else None


if __name__ == "__main__":
    main()
