"""Fixtures for data tests: the sample data files (the root conftest runs this package on one thread)."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA
