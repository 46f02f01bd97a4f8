"""Fixtures for data tests: the sample data files; one-thread kernels."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
