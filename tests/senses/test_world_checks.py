"""Section 6 ground truth: on a Backpack and a Transformer trained on the synthetic world inside the test session,
each sense method finds what the world planted (thresholds asserted), and works through the CLI."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch

from backpacklm.senses.debias import debias
from backpacklm.senses.edit import SenseEdit, edit_overrides, load_edits, measure_edit
from backpacklm.senses.projection import sense_projection
from backpacklm.senses.similarity import nearest_neighbours, sense_similarity
from tests.helpers import run_cli


def one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]


def test_polysemous_senses_cover_both_meanings(world_models):
    """Each polysemous word's senses' top-10 tokens hold >= 3 of the 4 continuation words of each meaning."""
    w = world_models
    for word, meanings in w.truth["polysemous"].items():
        top = set().union(*sense_projection(w.backpack, w.tokenizer, word, top=10).top_tokens(10))
        for topic, meaning in meanings.items():
            found = top & set(meaning["continuations"])
            assert len(found) >= 3, (word, topic, sorted(top))


def test_sense_neighbours_and_similarity_follow_the_world(world_models):
    w = world_models
    professions = set(w.truth["pronouns"]["rates_he"])
    near = nearest_neighbours(w.backpack, w.tokenizer, "engineer", n=5)
    assert len({t.strip() for t, _ in near.neighbours} & professions) >= 3, near.neighbours
    same = sense_similarity(w.backpack, w.tokenizer, "fox", "deer")  # two nature nouns
    other = sense_similarity(w.backpack, w.tokenizer, "fox", "planet")
    assert same.overall > other.overall and len(same.per_sense) == w.backpack.config.num_senses


def test_optimize_sense_halves_the_planted_bias_and_beats_the_nullspace(world_models):
    w = world_models
    pronouns = w.truth["pronouns"]
    report = debias([w.backpack, w.transformer], w.tokenizer, list(pronouns["rates_he"]), pronouns["templates"])
    by = {(r.model, r.method): r for r in report.results}
    assert by[("backpack", "Unmodified")].bias > 2.0  # the planted bias is learned
    optimized = by[("backpack", "Optimize-Sense")].reduction
    assert optimized >= 0.5, report.markdown()
    assert optimized > by[("transformer", "Project-Nullspace")].reduction, report.markdown()


def test_edit_moves_b_above_a_after_w(world_models):
    w = world_models
    makers = w.truth["facts"]["maker_of"]
    template = w.truth["facts"]["template"]
    products = list(makers)
    unrelated = "the fast player kicks the ball . the doctor said he was tired ."
    for i, product in enumerate(products):
        target = makers[products[(i + 1) % len(products)]]
        report = measure_edit(w.backpack, w.tokenizer, SenseEdit(product, makers[product], target),
                              [template.format(product)], unrelated)
        effect = report.prompts[0]
        assert effect.p_source_before > effect.p_target_before  # a before the edit
        assert effect.p_target_after > effect.p_source_after, report  # b after it
        assert report.perplexity_after == pytest.approx(report.perplexity_before, rel=1e-6)  # w absent: unchanged


@torch.no_grad()
def test_cached_generation_equals_uncached_under_an_edit(world_models):
    """The model in float64, so the comparison sees the cache logic, not float32 summation order (which alone differs
    by ~1e-5 on these logits); generate() hands back its scores in float32."""
    w = world_models
    model = copy.deepcopy(w.backpack).double()
    overrides = edit_overrides(model, w.tokenizer, [SenseEdit("phone", "acme", "globex")])
    prompt = torch.tensor([w.tokenizer.encode("i bought the phone globex edition . the phone")])
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, sense_overrides=overrides,
                              pad_token_id=w.tokenizer.eos_token_id, eos_token_id=None)
    full = model(out.sequences, sense_overrides=overrides, use_cache=False).logits[0]
    n = prompt.shape[1]
    cached = torch.stack(out.scores, dim=1)[0]  # [new, V]
    assert (cached - full[n - 1:-1]).abs().max() < 1e-5
    plain = model(out.sequences, use_cache=False).logits[0]
    assert (plain - full).abs().max() > 1e-2  # the edit does change the logits


def test_cli_senses_debias_edit_lexsim(world_models, tmp_path, capsys):
    w = world_models
    code, out, err = run_cli(capsys, "senses", "--model", w.backpack_dir, "--words", "bat,pitch,star,phone",
                             "--similarity", "--neighbours", "3", "--heatmap", "--out", tmp_path / "s")
    assert code == 0, err
    result = json.loads((tmp_path / "s" / "senses.json").read_text())
    assert len(result["projections"]) == 4 and len(result["similarity"]) == 6
    assert (tmp_path / "s" / "senses.png").stat().st_size > 10_000
    code, out, err = run_cli(capsys, "senses", "--model", w.backpack_dir, "--token", "bat")  # the old form
    assert code == 0 and "senses of 'bat'" in out

    (tmp_path / "professions.txt").write_text("engineer\nnurse\nzookeeper\n")
    code, out, err = run_cli(capsys, "debias", "--model", w.backpack_dir, w.transformer_dir, "--world", w.corpus_dir,
                             "--professions", tmp_path / "professions.txt", "--out", tmp_path / "d")
    assert code == 0 and "left out 1 profession(s) that are not one token: zookeeper" in out, err
    rows = json.loads((tmp_path / "d" / "debias.json").read_text())["results"]
    assert {(r["model"], r["method"]) for r in rows} >= {("backpack", "Optimize-Sense"), ("transformer", "Project-Nullspace")}
    assert [p["profession"] for p in rows[0]["professions"]] == ["engineer", "nurse"]
    assert (tmp_path / "d" / "debias.png").stat().st_size > 1000

    code, out, err = run_cli(capsys, "edit", "--model", w.backpack_dir, "--word", "phone", "--from", "acme", "--to",
                             "globex", "--prompt", "i bought the phone", "--save", tmp_path / "edits.json",
                             "--out", tmp_path / "e")
    assert code == 0, err
    assert "p(b) > p(a) after 1/1 prompts" in out
    assert load_edits(tmp_path / "edits.json") == [SenseEdit("phone", "acme", "globex")]
    code, out, err = run_cli(capsys, "sample", "--model", w.backpack_dir, "--prompt", "i bought the phone",
                             "--greedy", "--max-new-tokens", "1", "--edit", tmp_path / "edits.json")
    assert code == 0 and out.strip() == "i bought the phone globex", out
    code, out, err = run_cli(capsys, "edit", "--model", w.backpack_dir, "--edits", tmp_path / "edits.json", "--save",
                             "--prompt", "i bought the phone")
    saved = w.backpack_dir / "edits.json"  # the run directory as given (README: --edit M/edits.json), not step-N
    assert code == 0 and f"to {saved}" in out and load_edits(saved) == [SenseEdit("phone", "acme", "globex")]
    saved.unlink()

    gold = tmp_path / "world_pairs.txt"
    gold.write_text("fox\tdeer\t9\nplanet\tmoon\t8\nfox\tplanet\t1\nsinger\tball\t0.5\nowl\trabbit\t8.5\n"
                    "coach\tplayer\t9\ncomet\tgalaxy\t8\nchoir\tsong\t8.5\ntree\tsinger\t1\ncoach\tnebula\t0.5\n")
    for model in (w.backpack_dir, w.transformer_dir):  # a Backpack: every method; a GPT-2: embedding rows
        code, out, err = run_cli(capsys, "lexsim", "--model", model, "--data", gold, "--out", tmp_path / "l")
        assert code == 0, err
        result = json.loads((tmp_path / "l" / "lexsim.json").read_text())["results"][0]
        assert result["n_covered"] == 10 and ("sim_min" in result["spearman"]) == (model == w.backpack_dir)


def test_cli_bad_input_is_one_line_error(world_models, tmp_path, capsys):
    w = world_models
    one_line_error(*run_cli(capsys, "senses", "--model", w.backpack_dir, "--token", "zebra")[::2], "zebra",
                   "not in the vocabulary")
    one_line_error(*run_cli(capsys, "senses", "--model", w.backpack_dir, "--token", "bat", "--neighbours", "3",
                            "--sense", "9")[::2], "sense index 9 is out of range")
    one_line_error(*run_cli(capsys, "debias", "--model", w.backpack_dir, "--world", w.corpus_dir, "--sense", "9",
                            "--out", tmp_path / "d")[::2], "sense index 9 is out of range")
    one_line_error(*run_cli(capsys, "edit", "--model", w.backpack_dir, "--word", "phone", "--from", "acme",
                            "--to", "zebra")[::2], "'zebra' is not in the vocabulary")
    bad = tmp_path / "edits.json"
    bad.write_text('{"edits": [{"word": "phone"}]}')
    one_line_error(*run_cli(capsys, "sample", "--model", w.backpack_dir, "--edit", bad)[::2], "not an edits file")
    one_line_error(*run_cli(capsys, "senses", "--model", w.transformer_dir, "--token", "bat")[::2],
                   "needs a Backpack")


def test_cli_edit_interactive_loop(world_models, capsys, monkeypatch):
    w = world_models
    monkeypatch.setattr("sys.stdin", io.StringIO("i bought the phone\n\n"))
    code, out, err = run_cli(capsys, "edit", "--model", w.backpack_dir, "--word", "phone", "--from", "acme", "--to",
                             "globex", "--prompt", "i bought the phone", "--interactive", "--max-new-tokens", "1")
    assert code == 0, err
    assert "[original] i bought the phone acme" in out and "[edited] i bought the phone globex" in out
