"""OpenELM's Linear layer: the reordered CPU inference product equals ``F.linear``, and is used only for inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elmtune.models.linear import MAX_REORDERED_ROWS, OpenELMLinear, linear, reorders


@pytest.mark.parametrize(("rows", "reordered"), [(1, False), (3, True), (64, True), (300, False)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_product_equals_f_linear_in_shape_values_and_layout_in_either_order(rows, reordered, with_bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 24, generator=generator)  # (B, L, in): B * L rows
    weight = torch.randn(40, 24, generator=generator)  # (out, in)
    bias = torch.randn(40, generator=generator) if with_bias else None
    with torch.no_grad():
        assert reorders(x, weight) == reordered  # 2 to MAX_REORDERED_ROWS rows only
        out = linear(x, weight, bias)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())  # fp64 reference
    assert out.shape == (1, rows, 40) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_non_contiguous_input_and_an_empty_one_give_f_linears_result():
    weight = torch.randn(8, 6)
    wide = torch.randn(6, 5).t()  # (5, 6), a transposed view
    assert MAX_REORDERED_ROWS >= 5
    with torch.inference_mode():
        assert reorders(wide, weight)
        torch.testing.assert_close(linear(wide, weight), F.linear(wide, weight))
        assert linear(torch.empty(0, 6), weight).shape == (0, 8)


def test_training_and_other_dtypes_keep_f_linear_and_gradients_match():
    weight = nn.Parameter(torch.randn(8, 6))
    x = torch.randn(3, 6, requires_grad=True)
    assert not reorders(x, weight)  # a gradient to record: F.linear
    assert not reorders(x.detach().bfloat16(), weight.detach().bfloat16())
    with torch.no_grad():
        assert reorders(x, weight)
    frozen = weight.detach()
    assert not reorders(x, frozen)  # the input still needs its gradient
    linear(x, weight).square().sum().backward()
    grad_x, grad_w = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    F.linear(x, weight).square().sum().backward()
    torch.testing.assert_close(grad_x, x.grad)
    torch.testing.assert_close(grad_w, weight.grad)


def test_the_layer_is_an_nn_linear_with_its_keys_and_loads_an_nn_linear_state_dict():
    plain = nn.Linear(6, 4)
    layer = OpenELMLinear(6, 4)
    assert isinstance(layer, nn.Linear)
    layer.load_state_dict(plain.state_dict())
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain(x))


def test_the_openelm_model_uses_the_layer_for_every_projection_and_its_head(tiny_model):
    names = {name.rsplit(".", 1)[-1] for name, m in tiny_model.named_modules() if isinstance(m, OpenELMLinear)}
    assert names == {"qkv_proj", "out_proj", "proj_1", "proj_2", "lm_head"}
    assert not [n for n, m in tiny_model.named_modules() if type(m) is nn.Linear]
