"""CLI fixtures."""

from collections.abc import Iterator

import pytest
import torch

from elmtune.models import OpenELMConfig


@pytest.fixture
def tiny_config_dir(tmp_path):
    OpenELMConfig.from_preset("tiny").save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test's torch kernels on one thread (tiny kernels run far faster so on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
