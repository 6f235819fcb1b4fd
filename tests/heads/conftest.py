"""Shared fixtures of the head tests: tiny random models of every supported architecture, and (once per session)
small models trained here on data with known structure."""

from __future__ import annotations

import pytest
import torch

from .models import ARCHS, tiny_model


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def tiny_models():
    """arch -> a tiny random model in eval mode (seeded), built on first use."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny_model(name)
        return cache[name]

    return get


@pytest.fixture
def ids():
    return torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def induction_model():
    """A 2-layer model trained here on repeated random sequences (tests/heads/groundtruth.py)."""
    from .groundtruth import train_induction_model

    return train_induction_model()
