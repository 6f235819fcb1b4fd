"""resolve_model_dir: a broken run manifest (latest.json) is a one-line BackpackError, never a traceback."""

from __future__ import annotations

import pytest

from backpacklm.errors import BackpackError
from backpacklm.model.loading import resolve_model_dir


@pytest.mark.parametrize("manifest, message", [
    ("[1]", "not a valid run manifest"),
    ('{"checkpoint": 5}', "not a valid run manifest"),
    ('{"step": 5}', "not a valid run manifest"),
    ("{not json", "not a valid run manifest"),
    ('{"checkpoint": "."}', "names .*run, which is not a model directory"),  # was endless recursion
    ('{"checkpoint": "step-1"}', "names .*step-1, which is not a model directory"),
])
def test_broken_manifests(tmp_path, manifest, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest.json").write_text(manifest)
    with pytest.raises(BackpackError, match=message):
        resolve_model_dir(tmp_path / "run")


def test_manifest_names_the_checkpoint(tmp_path):
    (tmp_path / "run" / "step-1").mkdir(parents=True)
    (tmp_path / "run" / "step-1" / "config.json").write_text("{}")
    (tmp_path / "run" / "latest.json").write_text('{"checkpoint": "step-1", "step": 1}')
    assert resolve_model_dir(tmp_path / "run") == tmp_path / "run" / "step-1"
