"""Grouped-query attention under a mask: repeating the key/value heads (what CUDA and MPS get) gives the outputs and
gradients of ``enable_gqa``, and the CPU keeps its fused kernel with both."""

import pytest
import torch

import elmtune.models.layers as layers
from elmtune.models.attention_mask import shared_prefix_mask


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


@pytest.mark.parametrize("layout", [_left_padded, _shared_prefix], ids=["left-padded", "shared-prefix"])
def test_repeated_heads_equal_enable_gqa_under_a_mask(make_tiny, ids, monkeypatch, layout):
    model = make_tiny().train()
    model.config.attention_dropout = 0.0
    inputs = layout(ids)
    grouped = _outputs_and_grads(model, inputs)
    # what CUDA runs under a mask, forced on the CPU
    monkeypatch.setattr(layers, "sdpa_expands_kv", lambda device_type, masked: masked)
    repeated = _outputs_and_grads(model, inputs)
    torch.testing.assert_close(repeated[0], grouped[0], rtol=1e-5, atol=1e-5)
    for name, grad in grouped[1].items():
        torch.testing.assert_close(repeated[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_cpu_keeps_its_fused_kernel_with_a_mask_and_grouped_heads(make_tiny, ids):
    model = make_tiny()
    with torch.no_grad(), torch.profiler.profile() as profile:
        model(**_left_padded(ids))
    kernels = {event.key for event in profile.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    assert "aten::repeat_interleave" not in kernels


def test_which_devices_repeat_the_heads():
    assert not layers.sdpa_expands_kv("cpu", masked=True)
    assert not layers.sdpa_expands_kv("cuda", masked=False)  # causal without a mask: flash takes enable_gqa
    assert layers.sdpa_expands_kv("cuda", masked=True)
    assert layers.sdpa_expands_kv("mps", masked=False)
