"""Shared fixtures for adapter tests: tiny random OpenELM models, token ids, non-trivial adapter weights, and saved
adapters that look trained."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model


@pytest.fixture
def make_tiny() -> Callable[..., OpenELMForCausalLM]:
    """Factory for the ``tiny`` preset (4 layers, per-layer head counts and FFN widths) with seeded weights."""

    def make(seed: int = 0, dtype: torch.dtype = torch.float32) -> OpenELMForCausalLM:
        torch.manual_seed(seed)
        return OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).to(dtype).eval()

    return make


@pytest.fixture
def ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randint(3, 32000, (2, 9), generator=generator)


def _perturb(model: nn.Module, scale: float = 0.05, seed: int = 7) -> None:
    """Give every adapter tensor a non-trivial value (B != 0, magnitudes and norm copies moved)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("lora_B", "lora_embedding_A", "lora_magnitude_vector", "modules_to_save")):
                noise = torch.randn(param.shape, generator=generator) * scale
                param.add_(noise.to(param))


@pytest.fixture(scope="session")
def perturb() -> Callable[..., None]:
    return _perturb


def _trained_adapter(
    base_dir: Path, out: Path, seed: int = 7, base_name: str | None = None, **settings: object
) -> Path:
    """Save an adapter of ``settings`` on the checkpoint in ``base_dir`` with non-zero B (as after training)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(base_dir), AdapterConfig(**settings))
    _perturb(model, seed=seed)
    return save_adapter(model, out, base_name=base_name)


@pytest.fixture(scope="session")
def trained_adapter() -> Callable[..., Path]:
    return _trained_adapter


@pytest.fixture(autouse=True)
def _quiet_known_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny-model kernels are far faster on one thread than on a shared, oversubscribed CPU (about 10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
