"""User mistakes and edge cases of the sense commands, on tiny untrained models built in the test: one-line errors
(exit status 2, no traceback, nothing written), and results that stay right (valid JSON, no silent substitutes)."""

from __future__ import annotations

import json

import pytest
import torch

from backpacklm.data.tokenizers import build_word_tokenizer
from backpacklm.model.config import BackpackConfig
from backpacklm.model.transformer import build_model
from tests.helpers import cli_error, run_cli

TEXT = ("the king loves the crown . a queen fears the sea . the nurse came into the room . when he left , she "
        "stayed . the doctor came into the room . then she said he was tired .\n")
TINY = dict(n_embd=16, n_layer=1, n_head=2, num_senses=2, n_positions=32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"backpack": dir, "transformer": dir}: one word tokenizer (TEXT's pieces), untrained weights."""
    root = tmp_path_factory.mktemp("sense_cli")
    tokenizer = build_word_tokenizer([TEXT])
    for arch in ("backpack", "transformer"):
        torch.manual_seed(0)
        build_model(BackpackConfig(vocab_size=len(tokenizer), **TINY), arch).save_pretrained(root / arch)
        tokenizer.save_pretrained(root / arch)
    return {"backpack": root / "backpack", "transformer": root / "transformer"}


def strict_json(path):
    """The JSON in `path`, refusing the non-standard NaN / Infinity literals."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_lexsim_undefined_spearman_is_null(models, tmp_path, capsys):
    """All gold scores equal: rho is undefined, written as null (not NaN) and shown as n/a."""
    (tmp_path / "flat.txt").write_text("king\tqueen\t5\n" * 6 + "crown\tsea\t5\n" * 6)
    code, out, err = run_cli(capsys, "lexsim", "--model", models["backpack"], "--data", tmp_path / "flat.txt",
                             "--out", tmp_path / "o")
    assert code == 0, err
    result = strict_json(tmp_path / "o" / "lexsim.json")["results"][0]
    assert result["n_covered"] == 12 and result["spearman"]["embedding"] is None
    assert set(result["spearman"].values()) == {None}
    assert "| flat | 12/12 | n/a | n/a |" in out


def test_neighbours_never_list_excluded_tokens(models, tmp_path, capsys):
    """Asking for more neighbours than there are candidates lists every other word piece once, without the word
    itself or the special tokens (which scored -inf and made the JSON invalid)."""
    from backpacklm.model.loading import load_model

    code, out, err = run_cli(capsys, "senses", "--model", models["backpack"], "--token", "king", "--neighbours", "500",
                             "--out", tmp_path / "o")
    assert code == 0, err
    neighbours = strict_json(tmp_path / "o" / "senses.json")["neighbours"][0]["neighbours"]
    tokenizer = load_model(models["backpack"])[1]
    tokens = [token for token, _ in neighbours]
    assert len(tokens) == len(set(tokens)) == len(tokenizer) - 3  # all but " king", <|endoftext|> and <|unk|>
    assert not {" king", "<|endoftext|>", "<|unk|>"} & set(tokens)
    assert all(-1.0 <= cosine <= 1.0 for _, cosine in neighbours)


def test_lexsim_too_few_pairs_says_so(models, tmp_path, capsys):
    """Every word encodes but the file has fewer than 10 pairs: the error gives the coverage, not an empty list of
    unknown words."""
    (tmp_path / "short.txt").write_text("king\tqueen\t5\ncrown\tsea\t2\n")
    line = cli_error(capsys, "lexsim", "--model", models["backpack"], "--data", tmp_path / "short.txt",
                     "--out", tmp_path / "o")
    assert line.endswith("nothing to correlate (pairs covered: short 2/2)"), line
    assert not (tmp_path / "o").exists()
    (tmp_path / "mixed.txt").write_text("king\tzebra\t5\ncrown\tsea\t2\n")
    line = cli_error(capsys, "lexsim", "--model", models["backpack"], "--data", tmp_path / "mixed.txt",
                     tmp_path / "short.txt", "--out", tmp_path / "o")
    assert line.endswith("(first words it cannot encode: zebra; pairs covered: mixed 1/2, short 2/2)"), line


WORDS = ["king", "queen", "crown", "sea", "nurse", "room", "doctor", "tired", "loves", "fears", "came", "left", "said"]


def pair_file(path, seed: int):
    """12 pairs of TEXT's words with distinct scores."""
    import random

    rng = random.Random(seed)
    path.write_text("".join(f"{rng.choice(WORDS)}\t{rng.choice(WORDS)}\t{i}\n" for i in range(12)))
    return path


def test_repeated_data_and_model_options_add_up(models, tmp_path, capsys):
    """`--data A --data B` scores both files (the second used to replace the first); the same for debias --model."""
    a, b = pair_file(tmp_path / "a.txt", 0), pair_file(tmp_path / "b.txt", 1)
    code, out, err = run_cli(capsys, "lexsim", "--model", models["backpack"], "--data", a, "--data", b,
                             "--out", tmp_path / "o")
    assert code == 0, err
    assert [r["dataset"] for r in strict_json(tmp_path / "o" / "lexsim.json")["results"]] == ["a", "b"]
    from backpacklm.cli.main import build_parser

    args = build_parser().parse_args(["debias", "--model", "x", "--model", "y", "z", "--out", "o"])
    assert args.model == ["x", "y", "z"]


def test_sense_without_neighbours_is_refused(models, tmp_path, capsys):
    """--sense only applies to --neighbours: alone it was ignored (even out of range) and every sense printed."""
    for sense in ("1", "7"):
        line = cli_error(capsys, "senses", "--model", models["backpack"], "--token", "king", "--sense", sense,
                         "--out", tmp_path / "o")
        assert line == "backpack senses: error: --sense picks the sense of --neighbours N; give --neighbours too"
    assert not (tmp_path / "o").exists()


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def debias_files(tmp_path, train="the {} came into the room . when", test="the {} came into the room . then"):
    """--professions/--train-templates/--test-templates options for files in TEXT's vocabulary."""
    return ["--professions", write_lines(tmp_path / "professions.txt", "nurse", "doctor"),
            "--train-templates", write_lines(tmp_path / "train.txt", train),
            "--test-templates", write_lines(tmp_path / "test.txt", test)]


def test_debias_template_with_other_braces(models, tmp_path, capsys):
    """'{}' is the profession; other braces are text (str.format raised KeyError on '{x}', a traceback)."""
    from backpacklm.data.tokenizers import build_word_tokenizer
    from backpacklm.senses.debias import PromptSet

    tokenizer = build_word_tokenizer(["the nurse said {x} . when"])
    nurse = tokenizer.convert_tokens_to_ids("Ġnurse")
    prompts = PromptSet(tokenizer, "nurse", nurse, ["the {} said {x} . when"])
    assert tokenizer.decode(prompts.ids[0]) == "the nurse said {x} . when"
    assert prompts.at_profession.tolist() == [[False, True, False, False, False, False, False, False]]


def test_debias_prompt_words_outside_the_vocabulary(models, tmp_path, capsys):
    """A template word the tokenizer lacks ('office') used to become <|unk|> silently; now a one-line error."""
    argv = ["debias", "--model", models["backpack"], "--out", tmp_path / "o"]
    line = cli_error(capsys, *argv, *debias_files(tmp_path, test="the {} came into the office . when"))
    assert line == ("backpack debias: error: prompt 'the nurse came into the office . when': 1 word(s) not in the "
                    "tokenizer's vocabulary: 'office'; give templates in the model's vocabulary")
    assert "'The' '.' 'When'" in cli_error(capsys, *argv)  # the default templates
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli(capsys, *argv, *debias_files(tmp_path))
    assert code == 0 and strict_json(tmp_path / "o" / "debias.json")["professions"] == ["nurse", "doctor"], err


def test_debias_models_must_share_the_tokenizer(models, tmp_path, capsys):
    """A second model with another tokenizer was scored with the first one's ids, silently."""
    from backpacklm.data.tokenizers import build_char_tokenizer

    other = tmp_path / "char"
    tokenizer = build_char_tokenizer(TEXT)
    build_model(BackpackConfig(vocab_size=len(tokenizer), **TINY)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    capsys.readouterr()  # the save's progress bar
    line = cli_error(capsys, "debias", "--model", models["backpack"], other, "--out", tmp_path / "o",
                     *debias_files(tmp_path))
    assert line.startswith(f"backpack debias: error: {other} has a different tokenizer than {models['backpack']} (")
    assert "vocabulary" in line and line.endswith("); the models must share one")
    assert not (tmp_path / "o").exists()


def test_debias_sense_needs_a_backpack(models, tmp_path, capsys):
    """--sense on Transformers alone was ignored silently."""
    line = cli_error(capsys, "debias", "--model", models["transformer"], "--sense", "0", "--out", tmp_path / "o",
                     *debias_files(tmp_path))
    assert line == "backpack debias: error: a gender sense index applies to a Backpack; none of the models is one"
    assert not (tmp_path / "o").exists()


def test_edit_from_and_to_the_same_token(models, tmp_path, capsys):
    """--from crown --to crown left every probability as it was and reported success-less numbers; now refused."""
    line = cli_error(capsys, "edit", "--model", models["backpack"], "--word", "king", "--from", "crown", "--to",
                     "crown", "--prompt", "the king", "--out", tmp_path / "o")
    assert line == ("backpack edit: error: edit of 'king': 'crown' and 'crown' are the same token (' crown'), "
                    "so the edit would change nothing")
    assert not (tmp_path / "o").exists()


def test_edit_word_and_edits_file_together(models, tmp_path, capsys):
    """--edits FILE silently overrode --word/--from/--to given with it."""
    edits = tmp_path / "edits.json"
    edits.write_text('{"edits": [{"word": "king", "from": "crown", "to": "sea"}]}')
    line = cli_error(capsys, "edit", "--model", models["backpack"], "--edits", edits, "--word", "queen",
                     "--prompt", "the queen", "--out", tmp_path / "o")
    assert line == "backpack edit: error: give either --word, --from and --to, or --edits FILE, not both"
    assert not (tmp_path / "o").exists()


def test_edit_prompt_must_mention_the_word(models, tmp_path, capsys):
    """A prompt without w showed 'no effect' as if the edit had failed; now refused. ' queen' is not ' king'."""
    line = cli_error(capsys, "edit", "--model", models["backpack"], "--word", "king", "--from", "crown", "--to",
                     "sea", "--prompt", "the king", "--prompt", "the queen", "--out", tmp_path / "o")
    assert line == "backpack edit: error: prompt 'the queen' does not mention 'king', so the edit cannot show there"
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli(capsys, "edit", "--model", models["backpack"], "--word", "king", "--from", "crown", "--to",
                             "sea", "--prompt", "the king loves", "--out", tmp_path / "o")
    assert code == 0 and strict_json(tmp_path / "o" / "edit.json")["reports"][0]["prompts"][0]["prompt"] == \
        "the king loves", err


@pytest.mark.parametrize("mistake, message", [
    ("compare_backpack", "PPLM perturbs a Transformer's cache; for a Backpack use sense re-weighting"),
    ("one_reference", "MAUVE needs at least 2 reference texts and 2 generations per setting (given 1 and 2)"),
])
def test_steer_settings_fail_before_generating(models, tmp_path, capsys, monkeypatch, mistake, message):
    """--compare naming a Backpack, or a single MAUVE reference, failed only after every sense-steered generation."""
    import backpacklm.senses.steering as steering

    def must_not_run(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(steering, "generate_with_topic", must_not_run)
    monkeypatch.setattr(steering, "generate_pplm", must_not_run)
    (tmp_path / "royal.txt").write_text("king\nqueen\ncrown\n")
    (tmp_path / "refs.txt").write_text("the king loves the crown .\n")
    extra = (["--compare", models["backpack"]] if mistake == "compare_backpack"
             else ["--mauve-references", tmp_path / "refs.txt"])
    line = cli_error(capsys, "steer", "--model", models["backpack"], "--topic", tmp_path / "royal.txt",
                     "--samples", "2", "--length", "3", "--out", tmp_path / "o", *extra)
    assert line == f"backpack steer: error: {message}"
    assert not (tmp_path / "o").exists()
