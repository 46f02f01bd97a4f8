"""Sub-projections: splitting fused matrices is exact, and adapters change only the chosen rows."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from elmtune.adapters import (
    AdapterConfig,
    RowSplitLinear,
    adapter_deltas,
    apply_adapter,
    fuse_split_modules,
    merge_and_unload,
    merge_state_dict,
    read_adapter,
    save_adapter,
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


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_only_chosen_rows_change(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], tmp_path: Path, method: str
) -> None:
    base = make_tiny()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(base, AdapterConfig(method=method, targets="q,v,gate", r=4))
    perturb(model)
    save_adapter(model, tmp_path)
    merged = merge_state_dict(base_sd, read_adapter(tmp_path))
    geometry = base.config.geometry
    for i, g in enumerate(geometry.layers):
        qkv = f"transformer.layers.{i}.attn.qkv_proj.weight"
        proj_1 = f"transformer.layers.{i}.ffn.proj_1.weight"
        q, kv, ffn = g.q_rows, g.kv_rows, g.ffn_dim
        assert torch.equal(merged[qkv][q : q + kv], base_sd[qkv][q : q + kv])  # K rows untouched, bit for bit
        assert not torch.equal(merged[qkv][:q], base_sd[qkv][:q])  # Q rows adapted
        assert not torch.equal(merged[qkv][q + kv :], base_sd[qkv][q + kv :])  # V rows adapted
        assert torch.equal(merged[proj_1][ffn:], base_sd[proj_1][ffn:])  # up rows untouched
        assert not torch.equal(merged[proj_1][:ffn], base_sd[proj_1][:ffn])  # gate rows adapted
    untouched = [k for k in base_sd if "qkv_proj" not in k and "proj_1" not in k]
    assert all(merged[k] is base_sd[k] for k in untouched)

    # the in-model merge agrees and also leaves the K / up rows bit-identical
    plain = merge_and_unload(model)
    for key in merged:
        if "qkv_proj" in key or "proj_1" in key:
            torch.testing.assert_close(plain.state_dict()[key], merged[key], atol=1e-6, rtol=0)
    g0 = geometry.layers[0]
    rows = slice(g0.q_rows, g0.q_rows + g0.kv_rows)
    key0 = "transformer.layers.0.attn.qkv_proj.weight"
    assert torch.equal(plain.state_dict()[key0][rows], base_sd[key0][rows])


def test_deltas_name_apples_keys_and_rows(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], tmp_path: Path
) -> None:
    base = make_tiny()
    base_sd = base.state_dict()
    model = apply_adapter(base, AdapterConfig(targets="v,proj_2", r=4, alpha=8, layers=[2]))
    perturb(model)
    save_adapter(model, tmp_path)
    deltas = {d.module: d for d in adapter_deltas(base_sd, read_adapter(tmp_path))}
    g = base.config.geometry.layers[2]
    v = deltas["transformer.layers.2.attn.qkv_proj.v"]
    assert v.key == "transformer.layers.2.attn.qkv_proj.weight"
    assert v.rows == (g.q_rows + g.kv_rows, g.q_rows + 2 * g.kv_rows)
    layer = model.base_model.model.transformer.layers[2].attn.qkv_proj.v
    expected = 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight  # s = alpha / r = 2
    torch.testing.assert_close(v.delta, expected.detach())
    assert v.delta.dtype == torch.float32
    assert deltas["transformer.layers.2.ffn.proj_2"].rows is None
