import contextlib
import os

import pytest
import torch
from hypothesis import settings

# property tests draw the same examples on every run and every machine (no example database): a failure in CI is
# reproducible here, and the suite cannot pass or fail by the luck of the draw
settings.register_profile("lorabook", derandomize=True, database=None)
settings.load_profile("lorabook")

# unit tests are exact-theory tests: float64 everywhere unless a test says otherwise
torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Unit tests run tiny tensor programs: one intra-op thread (as `make unit` sets OMP_NUM_THREADS=1)."""
    from lorabook.config import few_threads

    with few_threads():
        yield


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture
def default_dtype():
    """``with default_dtype(torch.float32): ...`` runs a block under another torch default dtype (these tests'
    default is float64), restoring it afterwards."""
    return _default_dtype


@pytest.fixture
def float32_default():
    """Run a whole test under torch's usual float32 default dtype."""
    with _default_dtype(torch.float32):
        yield


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def clean_scale_env(monkeypatch):
    monkeypatch.delenv("LORABOOK_SCALE", raising=False)
    return monkeypatch
