"""Fixtures every test file shares: the dtypes and devices a function is checked on, and the rule
that `@pytest.mark.cuda` tests are skipped (not failed) where no CUDA GPU is present."""
import pytest
import torch

DTYPES = (torch.float32, torch.float64)


@pytest.fixture(params=DTYPES, ids=str)
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> torch.device:
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
