"""OpenELM's Linear layer: the reordered CPU inference product equals ``F.linear``, and is used only for inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import elmtune.models.linear as linear_module
from elmtune.models.linear import OpenELMLinear, linear, reordered_linear, reorders


@pytest.mark.parametrize("rows", [1, 3, 16, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_reordered_product_equals_f_linear_in_shape_values_and_layout(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 24, generator=generator)  # (B, L, in): B * L rows
    weight = torch.randn(40, 24, generator=generator)  # (out, in)
    bias = torch.randn(40, generator=generator) if with_bias else None
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())  # fp64 reference
    with torch.no_grad():
        for out in (reordered_linear(x, weight, bias), linear(x, weight, bias)):
            assert out.shape == (1, rows, 40) and out.dtype == torch.float32 and out.is_contiguous()
            torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "out_features", "in_features", "expected"),
    [
        (1, 1024, 1024, False),
        (7, 1024, 1024, False),
        (8, 1024, 1024, True),  # the measured range: 8 to 32 rows of a weight 1,024 or more each way
        (32, 32000, 1280, True),
        (33, 1024, 1024, False),
        (16, 1023, 4096, False),
        (16, 4096, 1023, False),
    ],
)
def test_only_weights_of_1024_features_and_inputs_of_8_to_32_rows_reorder(rows, out_features, in_features, expected):
    weight = torch.empty(out_features, in_features)  # (out, in): only the shape is read
    with torch.no_grad():
        assert (
            reorders(
                torch.empty(2, rows // 2, in_features) if rows % 2 == 0 else torch.empty(rows, in_features), weight
            )
            is expected
        )


def test_a_non_contiguous_input_and_an_empty_one_give_f_linears_result():
    weight = torch.randn(8, 6)
    wide = torch.randn(6, 5).t()  # (5, 6), a transposed view
    with torch.inference_mode():
        torch.testing.assert_close(reordered_linear(wide, weight), F.linear(wide, weight))
        assert reordered_linear(torch.empty(0, 6), weight).shape == (0, 8)


def test_training_other_dtypes_and_devices_keep_f_linear():
    weight = nn.Parameter(torch.randn(1024, 1024))
    x = torch.randn(16, 1024, requires_grad=True)
    with torch.no_grad():
        assert reorders(x, weight)
    assert not reorders(x, weight)  # gradients to record: F.linear
    assert not reorders(x, weight.detach())  # the input still needs its gradient
    assert not reorders(x.detach().bfloat16(), weight.detach().bfloat16())
    assert not reorders(x.detach().to("meta"), weight.detach().to("meta"))


def test_the_reordered_product_differentiates_like_f_linear():
    weight = nn.Parameter(torch.randn(12, 6, dtype=torch.float64))
    bias = nn.Parameter(torch.randn(12, dtype=torch.float64))
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)  # (B, L, in)
    reordered_linear(x, weight, bias).square().sum().backward()
    grads = [t.grad.clone() for t in (x, weight, bias)]
    x.grad = weight.grad = bias.grad = None
    F.linear(x, weight, bias).square().sum().backward()
    for got, expected in zip(grads, (x.grad, weight.grad, bias.grad), strict=True):
        torch.testing.assert_close(got, expected)


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


def test_generation_with_every_product_reordered_matches_f_linear(tiny_model, monkeypatch):
    """The tiny model's weights are too narrow to reorder; with the limits lifted every decoding product does."""
    prompt = torch.randint(3, tiny_model.config.vocab_size, (4, 6), generator=torch.Generator().manual_seed(0))
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    with torch.no_grad():
        plain_logits = tiny_model(prompt[:, :1]).logits  # (B, 1, V): 4 rows, F.linear
        plain_tokens = tiny_model.generate(prompt, **kwargs)
    calls = []
    monkeypatch.setattr(linear_module, "MIN_REORDERED_FEATURES", 1)
    monkeypatch.setattr(linear_module, "MIN_REORDERED_ROWS", 2)
    monkeypatch.setattr(linear_module, "reordered_linear", lambda *a: calls.append(1) or reordered_linear(*a))
    with torch.no_grad():
        logits = tiny_model(prompt[:, :1]).logits
        tokens = tiny_model.generate(prompt, **kwargs)
    assert len(calls) > 8 * 4 * 4  # every decoding step's projections and head went through the reordered product
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, plain_tokens)
