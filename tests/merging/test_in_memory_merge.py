"""The merge over an in-memory state dict: equal to the unmerged adapter and to peft's in-model merge, only the chosen
rows of fused weights change, and each target names Apple's key and rows."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from elmtune.adapters import AdapterConfig, apply_adapter, fuse_split_modules, save_adapter
from elmtune.merging import parse_adapter, read_adapter, target_delta

# Merged and unmerged forms round differently in fp32 (W + sBA summed once against Wx + s B(Ax)), through 4 layers to
# logits of up to about 5, where fp32's spacing is 4.8e-7: 2e-5 is about 40 units in the last place of the largest
# logit. Measured: up to 7.9e-6 (LoRA) and 1.06e-5 (DoRA, every target; an AMD EPYC CPU); a wrong merge moves logits by
# far more than the 1e-2 the adapter itself is required to move them.
ATOL = 2e-5
MIXED = ("q", "v", "gate", "out_proj", "proj_2")  # sub-projections and whole modules together


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("targets", [MIXED, ("all",)])
def test_merged_equals_unmerged_and_merge_is_idempotent(
    logits_of: Callable[..., torch.Tensor],
    make_tiny: Callable[..., nn.Module],
    perturb: Callable[..., None],
    ids: torch.Tensor,
    tmp_path: Path,
    merge_in_memory: Callable[..., dict[str, torch.Tensor]],
    method: str,
    targets: tuple[str, ...],
    adapted_tiny: Callable[..., nn.Module],
) -> None:
    model = adapted_tiny(method=method, targets=targets, rank_strategy="proportional")
    base_logits = logits_of(make_tiny(), ids)
    unmerged = logits_of(model, ids)
    assert (unmerged - base_logits).abs().max() > 1e-2  # the adapter does something
    save_adapter(model, tmp_path)

    # the product's merge over the state dict in Apple's layout, loaded into a fresh base model
    merged_sd = merge_in_memory(make_tiny().state_dict(), tmp_path)
    fresh = make_tiny()
    assert set(merged_sd) == set(fresh.state_dict())
    fresh.load_state_dict(merged_sd)
    torch.testing.assert_close(logits_of(fresh, ids), unmerged, atol=ATOL, rtol=0)

    # in-model merge (peft), twice: the second merge changes nothing
    model.merge_adapter()
    merged_once = logits_of(model, ids)
    weights_once = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.merge_adapter()
    torch.testing.assert_close(merged_once, unmerged, atol=ATOL, rtol=0)
    assert all(torch.equal(v, weights_once[k]) for k, v in model.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already merged: peft only unloads
        plain = model.merge_and_unload()
    fuse_split_modules(plain)
    assert set(plain.state_dict()) == set(merged_sd)  # Apple's fused keys again
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(value, merged_sd[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_only_chosen_rows_change(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], tmp_path: Path, merge_in_memory, method: str
) -> None:
    base = make_tiny()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(base, AdapterConfig(method=method, targets="q,v,gate", r=4))
    perturb(model)
    save_adapter(model, tmp_path)
    merged = merge_in_memory(base_sd, tmp_path)
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
    assert all(torch.equal(merged[k], base_sd[k]) for k in untouched)

    # peft's in-model merge agrees and also leaves the K / up rows bit-identical
    plain = model.merge_and_unload()
    fuse_split_modules(plain)
    for key in merged:
        if "qkv_proj" in key or "proj_1" in key:
            torch.testing.assert_close(plain.state_dict()[key], merged[key], atol=1e-6, rtol=0)
    g0 = geometry.layers[0]
    rows = slice(g0.q_rows, g0.q_rows + g0.kv_rows)
    key0 = "transformer.layers.0.attn.qkv_proj.weight"
    assert torch.equal(plain.state_dict()[key0][rows], base_sd[key0][rows])


def test_targets_name_apples_keys_and_rows(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], tmp_path: Path
) -> None:
    base = make_tiny()
    base_sd = base.state_dict()
    model = apply_adapter(base, AdapterConfig(targets="v,proj_2", r=4, alpha=8, layers=[2]))
    perturb(model)
    save_adapter(model, tmp_path)
    targets = {t.module: t for t in parse_adapter(read_adapter(tmp_path)).targets}
    g = base.config.geometry.layers[2]
    v = targets["transformer.layers.2.attn.qkv_proj.v"]
    assert v.key == "transformer.layers.2.attn.qkv_proj.weight"
    assert v.rows == (g.q_rows + g.kv_rows, g.q_rows + 2 * g.kv_rows)
    assert v.scale == 2.0 and v.magnitude is None and not v.embedding  # s = alpha / r = 8 / 4
    layer = model.base_model.model.transformer.layers[2].attn.qkv_proj.v
    expected = 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    delta = target_delta(v, base_sd[v.key][v.rows[0] : v.rows[1]])
    torch.testing.assert_close(delta, expected.detach())
    assert delta.dtype == torch.float32
    assert targets["transformer.layers.2.ffn.proj_2"].rows is None
