"""Merge tests: the product's merge over an in-memory state dict (the root conftest runs this package on one thread)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from elmtune.merging import StateDictSource, check_adapter_fits, merge_tensor, parse_adapter, read_adapter


def _merge_in_memory(base_state_dict: dict[str, torch.Tensor], adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The product's merge over an in-memory source: every base key, in its own dtype."""
    source = StateDictSource(base_state_dict)
    adapter = parse_adapter(read_adapter(adapter_dir))
    check_adapter_fits(source, adapter, str(adapter_dir))
    return {key: merge_tensor(source, adapter, key, source.dtype(key)) for key in source.keys()}


@pytest.fixture(scope="session")
def merge_in_memory() -> Callable[[dict[str, torch.Tensor], Path], dict[str, torch.Tensor]]:
    return _merge_in_memory
