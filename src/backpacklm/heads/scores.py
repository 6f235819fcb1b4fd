"""JSON round trip shared by the score tables of heads/ (head importance [layer, head], FFN importance [layer])."""

from __future__ import annotations

import json
import stat
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import BackpackError


class ScoreTable:
    """Mixin for a dataclass with a numpy `scores` field and a `ranking()`; `ranking_label` formats one entry;
    `kind` names the table in error messages."""

    kind = "scores"

    @staticmethod
    def ranking_label(entry):
        return entry

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["scores"] = np.asarray(self.scores).tolist()
        payload["ranking"] = [self.ranking_label(entry) for entry in self.ranking()]
        return payload

    @classmethod
    def from_dict(cls, payload: dict):
        if not isinstance(payload, dict) or "scores" not in payload:
            raise ValueError('expected a JSON object with "scores"')
        fields = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__}
        fields["scores"] = np.asarray(payload["scores"], dtype=np.float64)
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path, shape: tuple[int, ...] | None = None):
        """Read a table saved by `save`: its .json, or its .npy (scores only). `shape`: the scores' shape the model
        at hand needs (e.g. [layer, head]); a table of another shape is a BackpackError naming the file."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except OSError as err:
            raise BackpackError(f"{path}: cannot read the {cls.kind} file ({err.strerror})") from None
        if not stat.S_ISREG(mode):  # a folder, or a FIFO that would block the read
            raise BackpackError(f"{path}: cannot read the {cls.kind} file (not a regular file)")
        try:
            if path.suffix == ".npy":
                array = np.load(path, allow_pickle=False)
                if array.dtype.kind not in "iuf":  # complex or text scores would be cut or fail later
                    raise ValueError(f"scores must be real numbers, not {array.dtype}")
                table = cls(scores=array.astype(np.float64))
            else:
                table = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise BackpackError(f"{path}: not a valid {cls.kind} file ({err})") from None
        if shape is not None and table.scores.shape != tuple(shape):
            raise BackpackError(f"{path}: {cls.kind} of shape {list(table.scores.shape)} does not fit the model's "
                                f"{list(shape)}")
        return table
