import os

import pytest
import torch

# unit tests are exact-theory tests: float64 everywhere unless a test says otherwise
torch.set_default_dtype(torch.float64)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def clean_scale_env(monkeypatch):
    monkeypatch.delenv("LORABOOK_SCALE", raising=False)
    return monkeypatch
