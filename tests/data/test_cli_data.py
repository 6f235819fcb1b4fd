"""`backpack data prepare`: through a parser holding only this command, and through the real main when it imports."""

import argparse
import sys

import numpy as np
import pytest

from backpacklm.cli import data as cli_data
from backpacklm.errors import BackpackError
from tests.helpers import cli_error


def run_data_command(argv: list[str]) -> int:
    """What cli.main.main does, with only the data command registered."""
    parser = argparse.ArgumentParser(prog="backpack")
    cli_data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BackpackError as err:
        print(f"backpack {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def real_main():
    try:
        from backpacklm.cli.main import build_parser, main

        build_parser()  # every command module must import
    except ImportError as err:
        pytest.skip(f"backpack main not importable yet: {err}")
    return main


def test_prepare_writes_files_and_prints_summary(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello world\n" * 10)
    out = tmp_path / "out"
    code = run_data_command(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(out), "--val-fraction", "0.5"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "1 document(s): 61 train + 61 val tokens (uint16), vocab 10 (char)",
        f"wrote {out}/train.bin, val.bin, meta.json, tokenizer/",
    ]
    assert np.fromfile(out / "train.bin", dtype=np.uint16).size == 61


def test_prepare_bpe_options(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("".join(f"line {i}: the cat sat on the mat\n" for i in range(100)))
    argv = ["data", "prepare", str(tmp_path), "--out", str(tmp_path / "out"), "--tokenizer", "bpe"]
    argv += ["--vocab-size", "270"]
    assert run_data_command(argv) == 0
    assert "vocab 270 (bpe)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file or folder (built-in datasets: shakespeare)"),
        (b"", "empty file"),
        (b"\xff\xfe bad", "not UTF-8 text (invalid byte at offset 0)"),
    ],
    ids=["missing", "empty", "non-utf8"],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "doc.txt"
    if content is not None:
        path.write_bytes(content)
    assert run_data_command(["data", "prepare", str(path), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"backpack data: error: {path}: {message}\n" and captured.out == ""


def test_unknown_tokenizer_via_real_main(tmp_path, capsys):
    main = real_main()
    (tmp_path / "a.txt").write_text("abc")
    code = main(["data", "prepare", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--tokenizer", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("backpack data: error: unknown tokenizer 'nope'") and err.count("\n") == 1


def test_missing_file_via_real_main(tmp_path, capsys):
    main = real_main()
    assert main(["data", "prepare", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out")]) == 2
    message = f"{tmp_path / 'nope.txt'}: no such file or folder (built-in datasets: shakespeare)"
    assert capsys.readouterr().err == f"backpack data: error: {message}\n"


def test_gpt2_from_an_unreachable_hub_is_one_line(tmp_path, monkeypatch, capsys, caplog):
    """Offline, the hub client logged a warning per retry (22 lines on stderr) before the error."""
    import logging

    from transformers import AutoTokenizer

    def offline(*args, **kwargs):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    (tmp_path / "a.txt").write_text("abc")
    line = cli_error(capsys, "data", "prepare", tmp_path / "a.txt", "--out", tmp_path / "out", "--tokenizer", "gpt2")
    assert "could not load tokenizer 'gpt2' from the Hugging Face hub (We couldn't connect" in line
    assert "vocab.json + merges.txt" in line and not (tmp_path / "out").exists()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")] == []
