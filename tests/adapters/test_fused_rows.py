"""Sub-projections: splitting fused matrices and fusing them back is exact."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from elmtune.adapters import (
    RowSplitLinear,
    fuse_split_modules,
    split_fused_modules,
)


def test_row_split_linear_is_exact() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(8, 12, bias=True)
    original = linear.weight.detach().clone()
    split = RowSplitLinear.from_linear(linear, {"q": (0, 6), "k": (6, 9), "v": (9, 12)})
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(split(x), linear(x), atol=1e-6, rtol=0)
    assert torch.equal(split.q.weight, original[:6]) and torch.equal(split.v.bias, linear.bias[9:])
    fused = split.to_linear()
    assert torch.equal(fused.weight, original) and torch.equal(fused.bias, linear.bias)
    assert split.row_ranges() == {"q": (0, 6), "k": (6, 9), "v": (9, 12)}
    with pytest.raises(ValueError, match="do not continue at row"):
        RowSplitLinear.from_linear(linear, {"q": (0, 6), "v": (7, 12)})


def test_split_and_fuse_keep_the_model(make_tiny: Callable[..., nn.Module], ids: torch.Tensor) -> None:
    model = make_tiny()
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ffn = model.config.geometry.layers[1].ffn_dim
    blocks = {"transformer.layers.1.ffn.proj_1": {"gate": (0, ffn), "up": (ffn, 2 * ffn)}}
    split_fused_modules(model, blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
    assert fuse_split_modules(model) == ["transformer.layers.1.ffn.proj_1"]
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
