"""`backpack` command line: one subcommand group per module in this folder.

Each module exposes `register(subparsers)`, which adds its parser(s) and sets `func` (called with the parsed args).
A `BackpackError` anywhere, any usage error, an operating-system error (a path that cannot be created, read or
written), input nested too deeply to parse, running out of memory and sampling settings that overflow float32 become
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import BackpackError, first_line

COMMAND_MODULES = [
    "data", "train", "sample", "evaluate", "convert", "demo",
    "senses", "lexsim", "steer", "debias", "edit", "world",
    "heads",
    "gist",
]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, `backpack CMD: error: MSG`, exit status 2 (argparse prints the usage too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="backpack", description="Backpack language models: train, sample, read senses.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def os_error_line(err: OSError) -> str:
    """`path: reason` (`path -> other: reason` for a rename) from an OSError; its own text when it names no path."""
    if err.filename is None:
        return str(err)
    paths = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
    return f"{paths}: {err.strerror or err}"


# torch errors that come from the user's settings, not from a bug: (text in torch's message, what we say instead)
SETTING_ERRORS = [
    ("probability tensor contains", "the next-token probabilities became inf or nan: a setting is too extreme for "
                                    "float32 (e.g. a tiny --temperature, or a huge PPLM step size, --kl-scale or --gamma)"),
    ("can't allocate memory", "out of memory"),
    ("not enough memory", "out of memory"),
]


def setting_error_line(err: RuntimeError) -> str | None:
    """One line for a torch RuntimeError caused by the user's settings (see SETTING_ERRORS), else None."""
    text = str(err)
    return next((f"{said} ({first_line(err)})" for marker, said in SETTING_ERRORS if marker in text), None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars report progress; keep stderr for errors
    hf_logging.set_verbosity_error()
    hub_logging.set_verbosity_error()  # e.g. offline, `--tokenizer gpt2` logged every retry of the hub download
    try:
        code = args.func(args) or 0  # a command may return a non-zero status (train: stopped by a signal)
    except BackpackError as err:
        print(f"backpack {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. --out under a read-only or missing mount: the system's reason and the path
        print(f"backpack {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except RecursionError:  # e.g. JSON nested thousands of levels deep: no file of ours is
        print(f"backpack {args.command}: error: an input file is nested too deeply to read", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"backpack {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if (line := setting_error_line(err)) is None:
            raise  # a bug: keep the traceback
        print(f"backpack {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"backpack {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
