"""Turn text files into flat token files for training, nanoGPT style.

out_dir/
  train.bin, val.bin   raw token ids, uint16 (or uint32 for ids past 65535), documents each ended by
                       <|endoftext|>; the last `val_fraction` of every document's tokens goes to val.bin
  tokenizer/           the tokenizer (save_pretrained; AutoTokenizer.from_pretrained reads it)
  meta.json            vocab_size, dtype, eot_id, token counts, sources, ...
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from ..atomic import check_output_dir, check_output_file, replacing
from ..errors import BackpackError
from .shakespeare import fetch_shakespeare
from .tokenizers import (
    build_char_tokenizer,
    build_word_tokenizer,
    encode_ordinary,
    is_char_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)

BUILTIN_SOURCES = {"shakespeare": fetch_shakespeare}  # name -> function returning text files
BATCH_CHARS = 1 << 22  # documents are encoded in batches of about this many characters


def prepare_corpus(
    sources: list[str],
    out_dir: str | Path,
    tokenizer: str = "char",
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
) -> dict:
    """Tokenize `sources` into `out_dir` (see the module docstring) and return the meta dict.

    sources: files, folders (every *.txt below, sorted), glob patterns, or a built-in name ("shakespeare");
        each file is one UTF-8 document.
    tokenizer: "char" (the corpus's characters), "bpe" (byte-level BPE of `vocab_size` ids trained on the corpus),
        "word" (one id per distinct GPT-2-style word piece of the corpus, for small synthetic vocabularies),
        or anything `load_tokenizer` takes ("gpt2", a tokenizer folder).
    """
    if not 0 <= val_fraction < 1:
        raise BackpackError(f"val fraction must be in [0, 1), got {val_fraction}")
    out_dir = check_data_dir(out_dir)  # before any work, and before the old meta.json is removed
    paths = resolve_sources(sources)
    tok = _make_tokenizer(tokenizer, paths, vocab_size)
    n_ids = id_bound(tok)
    dtype = token_dtype(n_ids)
    out_dir.mkdir(parents=True, exist_ok=True)

    # every output is written beside its target first; the old meta.json goes before the first one is moved in
    # and the new one comes last, so an interrupted run never leaves a folder that reads as a complete dataset
    with replacing(out_dir / "meta.json") as meta_tmp, replacing(out_dir / "train.bin") as train_tmp, \
            replacing(out_dir / "val.bin") as val_tmp, _staged_tokenizer(tok, out_dir / "tokenizer") as move_tokenizer:
        counts = _write_splits(tok, paths, train_tmp, val_tmp, val_fraction, dtype)
        meta = {
            "vocab_size": n_ids,
            "dtype": np.dtype(dtype).name,
            "eot_id": tok.eos_token_id,
            "tokenizer_kind": _tokenizer_kind(tok, tokenizer),
            "tokenizer": str(tokenizer),
            "n_train_tokens": counts["train"],
            "n_val_tokens": counts["val"],
            "n_documents": len(paths),
            "sources": [str(p) for p in paths],
            "val_fraction": val_fraction,
        }
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (out_dir / "meta.json").unlink(missing_ok=True)
        move_tokenizer()
    return meta


def check_data_dir(out_dir: str | Path) -> Path:
    """`out_dir` as a Path if `prepare_corpus` can write its files there (see the module docstring); BackpackError
    naming the first that cannot be (a folder where a file goes, a file where a folder goes, a folder that refuses
    writes)."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir / "tokenizer")
    for name in ("meta.json", "train.bin", "val.bin"):
        check_output_file(out_dir / name)
    return out_dir


def _tokenizer_kind(tok: PreTrainedTokenizerFast, spec: str) -> str:
    if is_char_tokenizer(tok):
        return "char"
    return spec if spec in ("bpe", "word", "gpt2") else "pretrained"


def id_bound(tok: PreTrainedTokenizerFast) -> int:
    """One past the largest token id: len(tok), unless the ids have gaps (a loaded tokenizer may put a special
    token far past its vocabulary)."""
    return max(len(tok), 1 + max(tok.get_vocab().values()))


def token_dtype(vocab_size: int) -> type:
    """numpy dtype that holds every id below `vocab_size`."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def resolve_sources(sources: list[str]) -> list[Path]:
    """Absolute text file paths for `sources`, in order, duplicates dropped. An existing path beats a built-in name."""
    if not sources:
        raise BackpackError("no sources given")
    paths: list[Path] = []
    for source in map(str, sources):
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise BackpackError(f"{source}: folder has no *.txt files")
        elif path.is_file():
            found = [path]
        elif source in BUILTIN_SOURCES:
            found = BUILTIN_SOURCES[source]()
        elif glob.has_magic(source):
            found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not found:
                raise BackpackError(f"{source}: pattern matches no files")
        else:
            builtins = ", ".join(BUILTIN_SOURCES)
            raise BackpackError(f"{source}: no such file or folder (built-in datasets: {builtins})")
        paths.extend(p.resolve() for p in found)
    return list(dict.fromkeys(paths))


def read_document(path: Path) -> str:
    """The text of one UTF-8 file (a leading byte order mark dropped, line ends kept as they are)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BackpackError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from None
    except OSError as err:
        raise BackpackError(f"{path}: cannot read ({err.strerror})") from None
    if not text:
        raise BackpackError(f"{path}: empty file")
    return text


def _documents(paths: list[Path]) -> Iterator[str]:
    return (read_document(p) for p in paths)


def _make_tokenizer(spec: str, paths: list[Path], vocab_size: int) -> PreTrainedTokenizerFast:
    if spec == "char":
        chars: set[str] = set()
        for text in _documents(paths):
            chars.update(text)
        return build_char_tokenizer("".join(chars))
    if spec == "bpe":
        return train_bpe_tokenizer(_documents(paths), vocab_size)
    if spec == "word":
        return build_word_tokenizer(_documents(paths))
    return load_tokenizer(spec)


def _write_splits(tok, paths: list[Path], train_path: Path, val_path: Path, val_fraction: float, dtype) -> dict:
    """Tokenize `paths` into the two split files (each document's tail to val, both parts ended by end-of-text);
    returns the token counts {"train": n, "val": n}."""
    counts = {"train": 0, "val": 0}
    with open(train_path, "wb") as train_file, open(val_path, "wb") as val_file, \
            tqdm(total=len(paths), unit="file", desc="tokenizing", disable=len(paths) < 10) as progress:
        for batch in _batches(paths):
            for ids in _encode(tok, batch):
                n_train = int(len(ids) * (1 - val_fraction))
                for split, file, part in [("train", train_file, ids[:n_train]), ("val", val_file, ids[n_train:])]:
                    if len(part):
                        file.write(np.append(part, tok.eos_token_id).astype(dtype).tobytes())
                        counts[split] += len(part) + 1
            progress.update(len(batch))
    return counts


def _batches(paths: list[Path]) -> Iterator[list[tuple[Path, str]]]:
    """(path, text) pairs grouped into batches of about BATCH_CHARS characters."""
    batch, size = [], 0
    for path in paths:
        text = read_document(path)
        batch.append((path, text))
        size += len(text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode(tok: PreTrainedTokenizerFast, batch: list[tuple[Path, str]]) -> list[np.ndarray]:
    if not is_char_tokenizer(tok):
        return encode_ordinary(tok, [text for _, text in batch])
    out = []
    for path, text in batch:  # one by one to name the file: a loaded char tokenizer may lack some characters
        try:
            out += encode_ordinary(tok, [text])
        except BackpackError as err:
            raise BackpackError(f"{path}: {err}") from None
    return out


@contextmanager
def _staged_tokenizer(tok: PreTrainedTokenizerFast, folder: Path) -> Iterator[Callable[[], None]]:
    """Saves `tok` into a temporary folder beside `folder`; yields the function that moves it to `folder` (replacing
    what is there). The temporary folder is removed if that never happens."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        tok.save_pretrained(tmp)

        def move() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)

        yield move
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
