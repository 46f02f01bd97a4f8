"""Inference fixtures: the tiny preset loaded as ``generate`` loads it, and an independent greedy decoder."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from elmtune.inference import ModelSource, load_for_generation


@pytest.fixture(scope="module")
def loaded():
    """``(model, tokenizer)`` of the tiny preset on the CPU, in fp32."""
    return load_for_generation(ModelSource("tiny", device="cpu"))


def _greedy_reference(model: nn.Module, prompt_ids: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy decoding without a KV cache: a full forward over the whole sequence for every new token."""
    ids = list(prompt_ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits  # (1, L, V)
            token = int(logits[0, -1].argmax())
            new.append(token)
            ids.append(token)
            if token == eos_id:
                break
    return new


@pytest.fixture(scope="session")
def greedy_reference() -> Callable[[nn.Module, list[int], int, int], list[int]]:
    """``greedy_reference(model, prompt_ids, max_new_tokens, eos_id)`` -> the generated ids (EOS included)."""
    return _greedy_reference
