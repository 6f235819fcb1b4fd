"""Output path checks: an existing file where a folder goes (or a folder where a file goes) fails before any work,
and a failed command leaves no folder it created behind."""

from __future__ import annotations

import pytest

from backpacklm.atomic import check_output_dir, check_output_file, output_dir, replacing
from backpacklm.errors import BackpackError


def test_output_folder_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("keep me")
    for path in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(BackpackError, match="exists and is not a folder"):
            check_output_dir(path)
    assert (tmp_path / "file").read_text() == "keep me"
    assert check_output_dir(tmp_path / "new" / "sub") == tmp_path / "new" / "sub"


def test_output_file_that_is_a_folder_is_an_error(tmp_path):
    with pytest.raises(BackpackError, match="is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(BackpackError, match="exists and is not a folder"):
        check_output_file(tmp_path / "file" / "x.json")


def test_output_dir_removes_only_the_empty_folders_it_created(tmp_path):
    with pytest.raises(RuntimeError), output_dir(tmp_path / "a" / "b" / "c"):
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), output_dir(tmp_path / "a" / "b") as out:
        (out / "partial.txt").write_text("x")
        raise RuntimeError
    assert (tmp_path / "a" / "b" / "partial.txt").exists()
    with pytest.raises(RuntimeError), output_dir(tmp_path):  # existed before: kept
        raise RuntimeError
    assert tmp_path.is_dir()
    with output_dir(tmp_path / "ok") as out:
        pass
    assert out.is_dir()


def test_replacing_creates_the_folder_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "new" / "x.txt"
    with replacing(target) as tmp:
        tmp.write_text("one")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("two")
        raise RuntimeError
    assert target.read_text() == "one" and [p.name for p in target.parent.iterdir()] == ["x.txt"]
