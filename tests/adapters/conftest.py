"""Adapter tests run on one thread and without peft's known gradient-checkpointing warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_known_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> Iterator[None]:
    yield
