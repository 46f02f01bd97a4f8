"""Grouped-query attention: repeating the key/value heads (what MPS, CUDA under a mask and older torch on the CPU get)
gives the outputs and gradients of ``enable_gqa``, and the CPU attention runs a fused kernel, masked or not."""

import pytest
import torch

import elmtune.models.layers as layers
from elmtune.models.attention_mask import shared_prefix_mask


def _unpadded(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _left_padded(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # the first row is left-padded by three
    return {"input_ids": ids, "attention_mask": mask}


def _shared_prefix(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 0, 0, 1, 1, 2, 2, -1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 3, 4, 5], [0, 1, 2, 3, 4, 5, 4, 5, 0]])
    return {"input_ids": ids, "attention_mask": shared_prefix_mask(segments), "position_ids": positions}


def _outputs_and_grads(model, inputs):
    model.zero_grad()
    logits = model(**inputs).logits  # (B, L, V)
    keep = inputs["attention_mask"]
    keep = keep.bool() if keep.dim() == 2 else keep[:, 0].diagonal(dim1=-2, dim2=-1)  # (B, L) real tokens
    (logits[keep].float().pow(2).mean()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if "qkv_proj" in name}
    return logits[keep].detach(), grads


LAYOUTS = pytest.mark.parametrize(
    "layout", [_unpadded, _left_padded, _shared_prefix], ids=["causal", "left-padded", "shared-prefix"]
)


@LAYOUTS
def test_repeated_heads_equal_enable_gqa(make_tiny, ids, monkeypatch, layout):
    model = make_tiny().train()
    model.config.attention_dropout = 0.0
    inputs = layout(ids)
    grouped = _outputs_and_grads(model, inputs)
    # the repeated heads, forced on the CPU
    monkeypatch.setattr(layers, "sdpa_expands_kv", lambda device, dtype, head_dim, masked: True)
    repeated = _outputs_and_grads(model, inputs)
    torch.testing.assert_close(repeated[0], grouped[0], rtol=1e-5, atol=1e-5)
    for name, grad in grouped[1].items():
        torch.testing.assert_close(repeated[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@LAYOUTS
def test_the_cpu_attention_runs_a_fused_kernel(make_tiny, ids, layout):
    """On every supported torch: with ``enable_gqa`` where the CPU's flash kernel takes it, else with repeated heads."""
    model = make_tiny()
    with torch.no_grad(), torch.profiler.profile() as profile:
        model(**layout(ids))
    kernels = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels


def test_mps_always_repeats_the_heads():
    assert layers.sdpa_expands_kv(torch.device("mps"), torch.float16, 64, masked=False)
