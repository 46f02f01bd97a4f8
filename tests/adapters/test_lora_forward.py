"""Plain LoRA's ``addmm`` forward against the formula, and where it hands over to peft.

The whole model against peft's own LoRA layers: ``test_numerics.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from elmtune.adapters import AdapterConfig, apply_adapter
from elmtune.adapters.lora_forward import plain_lora_adapter


def _layer(make_tiny: Callable[..., nn.Module], alpha: int, dropout: float) -> nn.Module:
    """``proj_1`` of layer 1 adapted with r 4, B drawn away from zero, in training mode."""
    model = apply_adapter(make_tiny(), AdapterConfig(targets="proj_1", r=4, alpha=alpha, dropout=dropout))
    layer = model.base_model.model.transformer.layers[1].ffn.proj_1
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.randn_like(layer.lora_B["default"].weight) * 0.1)
    return layer.train()


@pytest.mark.parametrize(("alpha", "dropout"), [(4, 0.0), (8, 0.0), (8, 0.5)])
def test_the_addmm_forward_is_the_lora_formula_with_its_gradients(make_tiny, alpha: int, dropout: float) -> None:
    layer = _layer(make_tiny, alpha, dropout)
    x = torch.randn(3, 5, layer.in_features, requires_grad=True)
    assert plain_lora_adapter(layer, x, (), {}) == "default"
    torch.manual_seed(11)
    got = layer(x)
    got.square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.lora_A["default"].weight, layer.lora_B["default"].weight)]

    w, s = layer.base_layer.weight, alpha / 4
    a = layer.lora_A["default"].weight.detach().clone().requires_grad_(True)
    b = layer.lora_B["default"].weight.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    torch.manual_seed(11)  # the same dropout mask: drawn once, on the input, before A
    dropped = torch.nn.functional.dropout(x_ref, dropout, training=True)
    expected = x_ref @ w.T + s * (dropped @ a.T @ b.T)  # (3, 5, out)
    expected.square().sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for mine, reference in zip(grads, (x_ref.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-4, rtol=1e-4)


def test_peft_serves_the_calls_the_fast_path_does_not_cover(make_tiny) -> None:
    layer = _layer(make_tiny, alpha=8, dropout=0.0)
    x = torch.randn(2, 3, layer.in_features)
    assert plain_lora_adapter(layer, x, (), {"adapter_names": ["default"] * 2}) is None
    assert plain_lora_adapter(layer, x.to(torch.bfloat16), (), {}) is None  # peft casts the input first
    with _disabled(layer):
        assert plain_lora_adapter(layer, x, (), {}) is None
        torch.testing.assert_close(layer(x), layer.base_layer(x))
    layer.merge()
    assert plain_lora_adapter(layer, x, (), {}) is None
    layer.unmerge()
    dora = apply_adapter(make_tiny(), AdapterConfig(method="dora", targets="proj_1", r=4, alpha=8))
    dora_layer = dora.base_model.model.transformer.layers[1].ffn.proj_1
    assert plain_lora_adapter(dora_layer, x, (), {}) is None


class _disabled:
    """Adapters switched off on one layer for the ``with`` block (peft's ``enable_adapters(False)``)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def __enter__(self) -> None:
        self.layer.enable_adapters(False)

    def __exit__(self, *exc: object) -> None:
        self.layer.enable_adapters(True)
