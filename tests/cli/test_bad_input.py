"""Every kind of bad input is one line on stderr and exit status 2: nonsense numbers (rejected while parsing, before
any file is read), unusable devices, corrupted checkpoints, unknown words, undecodable text and output paths that
are taken. Models are tiny and untrained, built inside the test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backpacklm.checks import check
from backpacklm.cli.main import main
from backpacklm.data.prepare import prepare_corpus
from backpacklm.data.tokenizers import build_char_tokenizer, build_word_tokenizer
from backpacklm.errors import BackpackError
from backpacklm.gist.cache import SamplingConfig
from backpacklm.model.config import BackpackConfig
from backpacklm.model.transformer import build_model
from backpacklm.sampling import sample_text
from backpacklm.senses.pplm import PPLMSettings
from backpacklm.senses.steering import SamplingSettings
from backpacklm.train.loop import TrainConfig
from tests.helpers import cli_error

TEXT = "the king loves the crown. a queen fears the sea.\n"
TINY = dict(n_embd=16, n_layer=1, n_head=2, num_senses=2, n_positions=32)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    for name, tokenizer in (("char", build_char_tokenizer(TEXT)), ("word", build_word_tokenizer([TEXT]))):
        torch.manual_seed(0)
        build_model(BackpackConfig(vocab_size=len(tokenizer), **TINY)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    nan = root / "nan_weights"
    shutil.copytree(root / "char", nan)
    weights = load_file(nan / "model.safetensors")
    next(iter(weights.values())).view(-1)[0] = float("nan")
    save_file(weights, nan / "model.safetensors", metadata={"format": "pt"})
    not_object = root / "list_config"
    shutil.copytree(root / "char", not_object)
    (not_object / "config.json").write_text("[1, 2]")
    (root / "file").write_text("not a folder")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "corpus.txt").write_text(TEXT)
    (root / "unknown_pairs.txt").write_text("zebra\tyak\t3\nokapi\tgnu\t5\n")
    (root / "royal.txt").write_text("king\ncrown\n")
    np.save(root / "wrong_importance.npy", np.ones((3, 3)))  # the tiny models have 1 layer of 2 heads
    (root / "raising_scorer.py").write_text("def judge(text):\n    raise ValueError('boom')\n")
    (root / "broken_scorer.py").write_text("raise RuntimeError('broken at import')\n")
    # prepared data: with the char models' tokenizer (TEXT's characters), and with another whose 6 ids fit them too
    for name, text in (("story", TEXT * 20), ("abc", "a cab\n" * 60)):
        (root / f"{name}.txt").write_text(text)
        prepare_corpus([str(root / f"{name}.txt")], root / f"{name}_data", tokenizer="char")
    prepare_corpus([str(root / "story.txt")], root / "no_val_data", tokenizer="char", val_fraction=0)
    shutil.copytree(root / "story_data", root / "bad_meta_data")
    meta = json.loads((root / "bad_meta_data" / "meta.json").read_text())
    (root / "bad_meta_data" / "meta.json").write_text(json.dumps(meta | {"vocab_size": "abc"}))
    shutil.copytree(root / "char", root / "no_eos")
    (root / "no_eos" / "tokenizer_config.json").write_text("{}")
    (root / "deep.json").write_text('{"edits": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for name, header in (("slash_task", "a/b"), ("underscore_task", "a_b")):
        (root / f"{name}.jsonl").write_text(json.dumps({"task": {"name": header}}) + "\n"
                                            + json.dumps({"prompt": "ab", "answer": "c"}) + "\n")
    (root / "not_a_world").mkdir()
    (root / "not_a_world" / "truth.json").write_text('{"topics": {}}')
    return root


# (argv, fragment of the message): rejected by the option types, so no file needs to exist
USAGE = [
    ("sample --model M --max-new-tokens 0", "argument --max-new-tokens: must be an integer >= 1, got 0"),
    ("sample --model M --max-new-tokens -5", "must be an integer >= 1, got -5"),
    ("sample --model M --max-new-tokens abc", "invalid int value: 'abc'"),
    ("sample --model M --temperature 0", "argument --temperature: must be a finite number > 0"),
    ("sample --model M --temperature nan", "must be a finite number > 0, got nan"),
    ("sample --model M --temperature inf", "must be a finite number > 0, got inf"),
    ("sample --model M --top-k -1", "argument --top-k: must be an integer >= 0"),
    ("sample --model M --top-p 0", "argument --top-p: must be a number in (0, 1]"),
    ("sample --model M --top-p 1.5", "must be a number in (0, 1], got 1.5"),
    ("sample --model M --top-p nan", "must be a number in (0, 1]"),
    ("sample --model M --num-samples 0", "argument --num-samples"),
    ("sample --model M --seed -1", "argument --seed: must be an integer in [0, 2**64), got -1"),
    ("sample --model M --bogus", "unrecognized arguments: --bogus"),
    ("sample", "required: --model"),
    ("eval --model M --data D --batch-size 0", "argument --batch-size"),
    ("eval --model M --data D --block-size 0", "argument --block-size"),
    ("eval --model M --data D --max-batches 0", "argument --max-batches"),
    ("eval --model M --data D --text T", "not allowed with argument --data"),
    ("train --data D --out O --max-steps 0", "argument --max-steps: must be an integer >= 1, got 0"),
    ("train --data D --out O --batch-size -4", "argument --batch-size"),
    ("train --data D --out O --grad-accum 0", "argument --grad-accum"),
    ("train --data D --out O --block-size 0", "argument --block-size"),
    ("train --data D --out O --lr 0", "argument --lr: must be a number in (0, 3.4e38], float32's range, got 0.0"),
    ("train --data D --out O --lr nan", "argument --lr"),
    ("train --data D --out O --min-lr -1", "argument --min-lr: must be a finite number >= 0"),
    ("train --data D --out O --warmup-steps -1", "argument --warmup-steps"),
    ("train --data D --out O --weight-decay -1", "argument --weight-decay"),
    ("train --data D --out O --grad-clip nan", "argument --grad-clip"),
    ("train --data D --out O --eval-interval 0", "argument --eval-interval"),
    ("train --data D --out O --eval-batches 0", "argument --eval-batches"),
    ("train --data D --out O --log-interval 0", "argument --log-interval"),
    ("train --data D --out O --checkpoint-interval 0", "argument --checkpoint-interval"),
    ("train --data D --out O --stop-after 0", "argument --stop-after"),
    ("train --data D --out O --max-minutes 0", "argument --max-minutes"),
    ("train --data D --out O --threads 0", "argument --threads"),
    ("train --data D --out O --dropout 1.5", "argument --dropout: must be a number in [0, 1]"),
    ("train --data D --out O --dropout -0.1", "argument --dropout"),
    ("train --data D --out O --n-layer 0", "argument --n-layer"),
    ("train --data D --out O --n-head 0", "argument --n-head"),
    ("train --data D --out O --num-senses 0", "argument --num-senses"),
    ("train --data D --out O --n-embd -32", "argument --n-embd"),
    ("train --data D --out O --preset huge", "argument --preset: invalid choice"),
    ("data prepare X --out O --vocab-size 0", "argument --vocab-size"),
    ("data", "required: prepare"),
    ("demo --minutes 0", "argument --minutes"),
    ("demo --minutes nan", "argument --minutes"),
    ("senses --model M --token a --top 0", "argument --top"),
    ("senses --model M --token a --neighbours -1", "argument --neighbours"),
    ("senses --model M --token a --sense -1", "argument --sense"),
    ("debias --model M --out O --sense -2", "argument --sense"),
    ("edit --model M --max-new-tokens 0", "argument --max-new-tokens"),
    ("steer --model M --topic T --out O --samples 0", "argument --samples"),
    ("steer --model M --topic T --out O --length 0", "argument --length"),
    ("steer --model M --topic T --out O --top-k -1", "argument --top-k"),
    ("steer --model M --topic T --out O --temperature -1", "argument --temperature"),
    ("steer --model M --topic T --out O --window -1", "argument --window"),
    ("steer --model M --topic T --out O --gm-scale 2", "argument --gm-scale"),
    ("steer --model M --topic T --out O --kl-scale -1", "argument --kl-scale"),
    ("steer --model M --topic T --out O --pplm-step-sizes 0 1 nan 2", "argument --pplm-step-sizes"),
    ("steer --model M --topic T --out O --strength 5", "argument --strength: invalid choice"),
    ("world senses --out O --seed -1", "argument --seed"),
    ("heads importance --model M --out O --seed -1", "argument --seed"),
    ("heads importance --model M --out O --batch-size 0", "argument --batch-size"),
    ("heads importance --model M --out O --k -1", "argument --k"),
    ("heads importance --model M --out O --n 0", "argument --n"),
    ("heads induction --model M --out O --sequences 0", "argument --sequences"),
    ("heads", "required: heads_command"),
    ("gist train --data D --out O --gists 0", "argument --gists"),
    ("gist train --data D --out O --max-steps 0", "argument --max-steps"),
    ("gist compress --model M --prompt P --out O --gists 0", "argument --gists"),
    ("gist compress --model M --prompt P --out O --batch-size 0", "argument --batch-size"),
    ("gist generate --model M --compressed C --input x --top-k -1", "argument --top-k"),
    ("gist generate --model M --compressed C --input x --temperature 0", "argument --temperature"),
    ("gist generate --model M --compressed C --input x --max-new-tokens 0", "argument --max-new-tokens"),
    ("gist eval --model M --data D --out O --max-examples 0", "argument --max-examples"),
    ("gist bench --model M --data D --out O --max-prompts 0", "argument --max-prompts"),
    ("gist bench --model M --data D --out O --batch-sizes 1 0", "argument --batch-sizes"),
    ("gist bench --model M --data D --out O --repeats 0", "argument --repeats"),
    ("gist bench --model M --data D --out O --new-tokens 0", "argument --new-tokens"),
    ("gist bench --model M --data D --out O --threads -1", "argument --threads"),
]


@pytest.mark.parametrize("argv, fragment", USAGE, ids=[argv for argv, _ in USAGE])
def test_nonsense_options_are_one_line_usage_errors(capsys, argv, fragment):
    line = cli_error(capsys, *argv.split())
    command = " ".join(argv.split()[:2 if argv.split()[0] in ("data", "heads", "gist", "world") else 1])
    assert line.startswith((f"backpack {command}: error: ", "backpack: error: ")), line
    assert fragment in line, line


# (argv with {placeholders} for the fixture's paths, fragment of the message)
RUNTIME = [
    ("sample --model {char} --device nonsense", "unknown device 'nonsense'"),
    ("sample --model {nan_weights}", "NaN or infinite weights"),
    ("sample --model {list_config}", "not a model config"),
    ("sample --model {word} --prompt 'the xyzzy crown'", "1 word(s) not in the tokenizer's vocabulary: 'xyzzy'"),
    ("sample --model {char} --prompt 'the k\udcffng'", "not valid UTF-8"),
    ("eval --model {char} --text {corpus} --json {root}", "is a folder"),
    ("eval --model {char} --text {corpus} --json {file}/x.json", "exists and is not a folder"),
    ("senses --model {char} --words {latin1}", "not UTF-8"),
    ("senses --model {char} --token k --out {file}", "exists and is not a folder"),
    ("senses --model {char} --token k --json {root}", "is a folder"),
    ("edit --model {word} --word king --from crown --to sea --unrelated {latin1}", "not UTF-8"),
    ("edit --model {word} --word king --from crown --to sea --unrelated {root}/none.txt", "cannot read"),
    ("edit --model {word} --word king --from crown --to sea --out {file}", "exists and is not a folder"),
    ("data prepare {corpus} --out {file}", "exists and is not a folder"),
    ("world senses --out {file} --documents 10", "exists and is not a folder"),
    ("world instructions --out {file}/sub", "exists and is not a folder"),
    ("train --data {root}/data --out {file}", "exists and is not a folder"),
    ("heads importance --model {char} --out {file} --builtin copy", "exists and is not a folder"),
    ("lexsim --model {char} --data {corpus} --out {file}", "exists and is not a folder"),
    ("debias --model {char} --out {file}", "exists and is not a folder"),
    ("lexsim --model {word} --data {unknown_pairs} --out {root}/lexsim", "nothing to correlate (first words it cannot"),
    ("steer --model {char} --topic {corpus} --out {file}", "exists and is not a folder"),
    ("gist compress --model {char} --prompt x --out {root}", "is a folder"),
    ("gist eval --model {char} --data {corpus} --out {file}", "exists and is not a folder"),
    ("gist bench --model {char} --data {corpus} --out {file}", "exists and is not a folder"),
    ("eval --model {char} --data {abc_data}", "abc_data was prepared with a different tokenizer than"),
    ("eval --model {word} --data {story_data}", "(data vs model: vocabulary 22 vs"),
    ("heads induction --model {char} --data {abc_data} --out {root}/induction", "different tokenizer"),
    ("heads importance --model {char} --builtin pairs --out {root}/pairs", "task pairs: 2 character(s) not in"),
    ("heads induction --model {char} --importance {wrong_importance} --out {root}/ind",
     "wrong_importance.npy: importance of shape [3, 3] does not fit the model's [1, 2]"),
    ("heads eval --model {char} --builtin copy --prune-percent 50 --importance {wrong_importance} --out {root}/ev",
     "importance of shape [3, 3] does not fit the model's [1, 2]"),
    ("steer --model {word} --topic {royal} --strength 0 --prompt the --samples 1 --length 2 "
     "--scorer {raising_scorer}:judge --out {root}/steer1 --no-progress", "failed on a generation: ValueError: boom"),
    ("steer --model {word} --topic {royal} --strength 0 --prompt the --samples 1 --length 2 "
     "--scorer {broken_scorer}:judge --out {root}/steer2", "RuntimeError: broken at import"),
    ("edit --model {word} --word king --from crown --to sea", "the default prompt 'The king' does not fit"),
    # paths the system refuses (nothing can be created under /proc), with its reason, before any work (no progress bar)
    ("data prepare {corpus} --out /proc/backpacklm-test/data", "cannot write in /proc (No such file or directory)"),
    ("eval --model {char} --text {corpus} --json /proc/backpacklm-test.json", "cannot write in /proc"),
    ("train --data {no_val_data} --out {root}/no_val_run", "the validation split has 0 token(s)"),
    ("eval --model {char} --data {bad_meta_data}", "vocab_size 'abc', expected a vocabulary size"),
    ("sample --model {no_eos} --max-new-tokens 2", "an empty prompt starts from the end-of-text token"),
    ("debias --model {char} --world {not_a_world} --out {root}/debias", "not a world's ground truth (no polysemous"),
    ("edit --model {word} --edits {deep}", "an input file is nested too deeply to read"),
    ("heads importance --model {char} --builtin copy --builtin copy --out {root}/twice",
     "tasks 'copy' and 'copy' would write the same result files"),
    ("heads importance --model {char} --task {slash_task} --task {underscore_task} --out {root}/collide",
     "tasks 'a/b' and 'a_b' would write the same result files"),
    ("train --init-from {char} --data {story_data} --out {root}/init_run --n-layer 4",  # was ignored, yet recorded
     "keeps that model's sizes and settings; drop the model options (n_layer)"),
    ("gist eval --model {char} --data x={corpus} --data x={corpus} --out {root}/ge1", "two --data splits are named 'x'"),
    ("gist eval --model {char} --data ={corpus} --out {root}/ge2", "give SPLIT=FILE or FILE, with a split name and a file"),
    ("gist eval --model {char} --data seen= --out {root}/ge3", "--data 'seen=': give SPLIT=FILE or FILE"),
    ("gist train --data {corpus} --out {root}/gist_block --block-size 8", "--block-size does not apply to gist training"),
    # a file that is not the command's own result is refused, not replaced (these replaced a model's files)
    ("eval --model {char} --text {corpus} --json {char}/config.json", "config.json exists and is not an earlier eval"),
    ("edit --model {word} --word king --from crown --to sea --prompt king --save {corpus}",
     "corpus.txt exists and is not an edits file; refusing to replace it"),
    ("gist compress --model {char} --prompt x --out {char}/model.safetensors",
     "model.safetensors exists and is not a compressed-prompt file"),
    # numbers that overflow: a seed torch cannot take, sampling that overflows float32, a model larger than memory
    ("sample --model {char} --seed 18446744073709551616", "must be an integer in [0, 2**64), got 18446744073709551616"),
    ("train --data {story_data} --out {root}/lr_run --lr 1e300", "--lr: must be a number in (0, 3.4e38], float32's range, got 1e+300"),
    ("sample --model {char} --temperature 1e-45 --max-new-tokens 2", "the next-token probabilities became inf or nan"),
    ("train --data {story_data} --out {root}/huge_run --n-embd 100000 --n-head 1 --num-senses 1 --n-layer 1",
     "GiB for its float32 weights alone; this machine has"),
    ("steer --model {word} --topic {royal} --strength 0 --prompt the --samples 1 --length 2 --mauve-references "
     "{corpus} --mauve-model {char} --out {root}/steer3", "char has a different tokenizer than"),
]


@pytest.mark.parametrize("argv, fragment", RUNTIME, ids=[argv for argv, _ in RUNTIME])
def test_bad_files_devices_and_words_are_one_line_errors(paths, capsys, argv, fragment):
    import shlex

    names = {p.stem: p for p in paths.iterdir()} | {"root": paths}
    line = cli_error(capsys, *[a.format(**names) for a in shlex.split(argv)])
    assert fragment in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["sample --model {char}", "train --data {char} --out {root}/run"])
def test_cuda_without_cuda_is_one_line_error(paths, capsys, command):
    argv = command.format(char=paths / "char", root=paths).split() + ["--device", "cuda"]
    assert "CUDA is not available" in cli_error(capsys, *argv)
    assert not (paths / "run").exists()


def test_failed_command_leaves_no_new_folder(paths, capsys, tmp_path):
    out = tmp_path / "new" / "heads"
    assert "unknown built-in task" in cli_error(capsys, "heads", "importance", "--model", paths / "char", "--out",
                                                 out, "--builtin", "bogus")
    assert not (tmp_path / "new").exists()


def test_checks_come_before_the_work(paths, capsys, tmp_path):
    """A sense index out of range stops `senses` before it prints any projection; a world too small to hold every
    planted word stops `world senses` before it writes anything."""
    line = cli_error(capsys, "senses", "--model", paths / "char", "--token", "k", "--neighbours", "3", "--sense", "9")
    assert "sense index 9 is out of range: the model has senses 0..1" in line
    assert capsys.readouterr().out == ""
    line = cli_error(capsys, "world", "senses", "--out", tmp_path / "small_world", "--documents", "20", "--prepare")
    assert "a world of 20 documents leaves out" in line and not (tmp_path / "small_world").exists()


def test_skipped_topic_words_are_listed(paths, capsys, tmp_path):
    (tmp_path / "mixed.txt").write_text("king\nzebra\n")
    code = main(["steer", "--model", str(paths / "word"), "--topic", str(tmp_path / "mixed.txt"), "--strength", "0",
                 "--prompt", "the", "--samples", "1", "--length", "2", "--no-progress", "--out", str(tmp_path / "s")])
    line = "topic mixed: 1 of 2 words skipped (the tokenizer cannot encode them): zebra"
    assert code == 0 and line in capsys.readouterr().out and line in (tmp_path / "s" / "steer.md").read_text()


def test_interactive_edit_needs_no_prompt(paths, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("the king\n"))
    code = main(["edit", "--model", str(paths / "word"), "--word", "king", "--from", "crown", "--to", "sea",
                 "--interactive", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "[original] the king" in out and "[edited] the king" in out, out


def test_data_from_another_tokenizer_is_refused_before_any_work(paths, capsys, tmp_path):
    """The ids of abc_data (6 characters) fit the char model's 22, so only the tokenizer check stops them."""
    line = cli_error(capsys, "eval", "--model", paths / "char", "--data", paths / "abc_data")
    assert line == (f"backpack eval: error: {paths / 'abc_data'} was prepared with a different tokenizer than "
                    f"{paths / 'char'} (data vs model: vocabulary 6 vs 22 tokens, "
                    "first difference at id 2: 'a' vs '.')")
    tiny = ["--max-steps", "2", "--stop-after", "1", "--block-size", "8", "--batch-size", "2", "--eval-batches", "1",
            "--no-progress"]
    line = cli_error(capsys, "train", "--init-from", paths / "char", "--data", paths / "abc_data", "--out",
                     tmp_path / "refused", *tiny)
    assert "abc_data was prepared with a different tokenizer than" in line and not (tmp_path / "refused").exists()
    run = tmp_path / "run"  # the matching data trains, then the run's data folder is swapped
    assert main(["train", "--init-from", str(paths / "char"), "--data", str(paths / "story_data"), "--out", str(run),
                 *tiny]) == 0
    line = cli_error(capsys, "train", "--resume", "--data", paths / "abc_data", "--out", run, *tiny)
    assert f"different tokenizer than {run / 'step-0000001'} (data vs model" in line


def test_data_without_a_tokenizer_folder_is_not_compared(paths, capsys, tmp_path):
    data = shutil.copytree(paths / "abc_data", tmp_path / "abc_data", ignore=shutil.ignore_patterns("tokenizer"))
    assert main(["eval", "--model", str(paths / "char"), "--data", str(data)]) == 0


API = [
    (lambda: TrainConfig(data="d", out="o", max_steps=0), "max_steps must be an integer >= 1, got 0"),
    (lambda: TrainConfig(data="d", out="o", batch_size=2.5), "batch_size must be an integer >= 1"),
    (lambda: TrainConfig(data="d", out="o", lr=float("nan")), "lr must be a number in (0, 3.4e38], float32's range, got nan"),
    (lambda: TrainConfig(data="d", out="o", eval_interval=0), "eval_interval"),
    (lambda: BackpackConfig(**{**TINY, "n_head": 0}), "n_head must be an integer >= 1"),
    (lambda: BackpackConfig(**TINY, resid_pdrop=1.5), "resid_pdrop must be a number in [0, 1]"),
    (lambda: SamplingSettings(samples=0), "samples must be an integer >= 1"),
    (lambda: PPLMSettings(gm_scale=2.0), "gm_scale must be a number in [0, 1]"),
    (lambda: SamplingConfig(temperature=0.0), "temperature must be a finite number > 0"),
    (lambda: check("seed", True, "non_negative_int"), "seed must be an integer >= 0, got True"),
]


@pytest.mark.parametrize("make, message", API, ids=[m for _, m in API])
def test_api_configs_reject_what_the_cli_rejects(make, message):
    with pytest.raises(BackpackError) as err:
        make()
    assert message in str(err.value)


def test_sample_text_rejects_nonsense_settings(paths):
    from backpacklm.model.loading import load_model

    model, tokenizer = load_model(paths / "char")
    for kwargs, message in [({"top_p": 0.0}, "top_p"), ({"max_new_tokens": 0}, "max_new_tokens"),
                            ({"temperature": float("inf")}, "temperature"), ({"top_k": -1}, "top_k")]:
        with pytest.raises(BackpackError, match=message):
            sample_text(model, tokenizer, "the", **kwargs)
    assert json.loads((paths / "char" / "config.json").read_text())["model_type"] == "backpack"


def test_failed_commands_keep_what_was_there(paths, capsys, tmp_path):
    """A command that fails on bad input leaves earlier results as they were: saved edits, a previous demo run,
    prepared data, a generated world."""
    model = tmp_path / "word"
    shutil.copytree(paths / "word", model)
    assert main(["edit", "--model", str(model), "--word", "king", "--from", "crown", "--to", "sea", "--prompt",
                 "the king", "--save"]) == 0
    saved = (model / "edits.json").read_bytes()
    line = cli_error(capsys, "edit", "--model", model, "--word", "queen", "--from", "sea", "--to", "crown", "--save")
    assert "the default prompt 'The queen' does not fit" in line and (model / "edits.json").read_bytes() == saved

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "demo.json").write_text("{}")
    (demo / "samples.txt").write_text("an earlier demo's samples")
    assert "no such file or folder" in cli_error(capsys, "demo", "--out", demo, "--data", tmp_path / "missing.txt")
    assert "need characters this text lacks" in cli_error(capsys, "demo", "--out", demo, "--data", paths / "corpus.txt")
    assert sorted(p.name for p in demo.iterdir()) == ["demo.json", "samples.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo.")]  # no staging folder left behind

    data = tmp_path / "data"
    shutil.copytree(paths / "story_data", data)
    shutil.rmtree(data / "tokenizer")
    (data / "tokenizer").write_text("a file where the tokenizer folder goes")
    assert "exists and is not a folder" in cli_error(capsys, "data", "prepare", paths / "corpus.txt", "--out", data)
    assert (data / "meta.json").is_file()

    world = tmp_path / "world"
    world.mkdir()
    (world / "world.txt").write_text("an earlier world\n")
    (world / "data").write_text("a file where the prepared data goes")
    line = cli_error(capsys, "world", "senses", "--out", world, "--documents", "300", "--prepare")
    assert "exists and is not a folder" in line and (world / "world.txt").read_text() == "an earlier world\n"
