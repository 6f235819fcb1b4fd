"""JSON round trip shared by the score tables of heads/ (head importance [layer, head], FFN importance [layer])."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np


class ScoreTable:
    """Mixin for a dataclass with a numpy `scores` field and a `ranking()`; `ranking_label` formats one entry."""

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
        fields = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__}
        fields["scores"] = np.asarray(payload["scores"], dtype=np.float64)
        return cls(**fields)
