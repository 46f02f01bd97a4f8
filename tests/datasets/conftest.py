"""Fixtures for data tests: the bundled tokenizer, the sample data files, a tiny random OpenELM in fp32."""

from pathlib import Path

import pytest
import torch

from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_tokenizer

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls run faster on one thread, and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).eval()
