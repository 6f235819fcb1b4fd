"""Atomic file writes: write to a temporary file beside the target, then rename over it (os.replace), so a reader
or an interrupted run never sees a partial file. Output paths are checked before the work that fills them."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import BackpackError


def check_output_dir(path: str | Path) -> Path:
    """`path` if it can be an output folder (an existing folder, or creatable); BackpackError if it or a parent is
    an existing file, or if the nearest existing folder refuses a new entry (read-only, /proc, no permission)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise BackpackError(f"{folder} exists and is not a folder; choose another output folder")
            try:  # the only sure test of writability (os.access says yes to root even where mkdir fails)
                os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".backpacklm-probe."))
            except OSError as err:
                raise BackpackError(f"cannot write in {folder} ({err.strerror}); choose another output folder") from None
            break
    return path


def check_output_file(path: str | Path, kind: str | None = None, is_kind: Callable[[Path], bool] | None = None) -> Path:
    """`path` if a file can be written there: not an existing folder, and its folder usable (`check_output_dir`).
    With `is_kind`, an existing file is replaced only if it is one of the command's own results (`is_kind(path)`);
    anything else there (a corpus, a model's config.json or weights) is refused, not overwritten."""
    path = Path(path)
    if path.is_dir():
        raise BackpackError(f"{path} is a folder; give a file name")
    check_output_dir(path.parent)
    if is_kind is not None and path.exists() and not is_kind(path):
        raise BackpackError(f"{path} exists and is not {kind}; refusing to replace it (choose another name)")
    return path


def is_json_object_with(path: Path, *keys: str) -> bool:
    """Whether `path` holds a JSON object with all of `keys` (how a command recognizes a result file of its own)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and all(key in value for key in keys)


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """The output folder `path`, created if missing; if the block fails, the folders it created are removed again
    while they are empty, so a failed command leaves nothing behind."""
    path = check_output_dir(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: keep it (and its parents)
                break
        raise


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; when the block ends without error it replaces `path`, otherwise it
    is removed and `path` is left as it was. The folder of `path` is created if missing."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, payload, allow_nan: bool = True) -> None:
    """`payload` as indented JSON; allow_nan=False: ValueError for NaN or infinity (not valid JSON) instead of
    writing bare NaN / Infinity."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, allow_nan=allow_nan)
        f.flush()
        os.fsync(f.fileno())
