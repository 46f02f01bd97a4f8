"""Numerical equivalences on the tiny OpenELM in fp32: init, save/load, plain peft, fast DoRA vs peft's DoRA."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from elmtune.adapters import (
    AdapterConfig,
    apply_adapter,
    build_lora_config,
    load_adapter,
    save_adapter,
)

ATOL = 1e-5
MIXED = ("q", "v", "gate", "out_proj", "proj_2")  # sub-projections and whole modules together


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_init_output_equals_base(
    logits_of: Callable[..., torch.Tensor], make_tiny: Callable[..., nn.Module], ids: torch.Tensor, method: str
) -> None:
    base = logits_of(make_tiny(), ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(
            make_tiny(), AdapterConfig(method=method, targets=("token_embeddings", "q", "proj_1"), r=4, layers="0-1")
        )
        model_subs = apply_adapter(make_tiny(), AdapterConfig(method=method, targets="q,v,gate,proj_2", r=4))
    for m in (model, model_subs):
        torch.testing.assert_close(logits_of(m, ids), base, atol=ATOL, rtol=0)
        m.train()  # dropout is active, B = 0 still makes the update vanish
        with torch.no_grad():
            torch.testing.assert_close(m(input_ids=ids).logits, base, atol=ATOL, rtol=0)


def test_dora_magnitude_starts_at_row_norms(make_tiny: Callable[..., nn.Module]) -> None:
    base = make_tiny()
    qkv0 = base.transformer.layers[0].attn.qkv_proj.weight.detach().clone()
    proj2 = base.transformer.layers[2].ffn.proj_2.weight.detach().clone()
    model = apply_adapter(base, AdapterConfig(method="dora", targets="v,proj_2", r=4))
    layers = model.base_model.model.transformer.layers
    g = base.config.geometry.layers[0]
    v_rows = qkv0[g.q_rows + g.kv_rows :]
    torch.testing.assert_close(layers[0].attn.qkv_proj.v.lora_magnitude_vector["default"].weight, v_rows.norm(dim=1))
    torch.testing.assert_close(layers[2].ffn.proj_2.lora_magnitude_vector["default"].weight, proj2.norm(dim=1))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_save_load_gives_identical_logits(
    logits_of: Callable[..., torch.Tensor],
    make_tiny: Callable[..., nn.Module],
    perturb: Callable[..., None],
    ids: torch.Tensor,
    tmp_path: Path,
    method: str,
    adapted_tiny: Callable[..., nn.Module],
) -> None:
    model = adapted_tiny(method=method, targets=("token_embeddings", *MIXED), train_norms=True)
    expected = logits_of(model, ids)
    save_adapter(model, tmp_path, base_name="tiny")
    loaded = load_adapter(make_tiny(), tmp_path)
    assert torch.equal(logits_of(loaded, ids), expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = load_adapter(make_tiny(), tmp_path, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_plain_peft_loads_adapters_without_sub_projections(
    logits_of: Callable[..., torch.Tensor],
    make_tiny: Callable[..., nn.Module],
    perturb: Callable[..., None],
    ids: torch.Tensor,
    tmp_path: Path,
    method: str,
    adapted_tiny: Callable[..., nn.Module],
) -> None:
    # apple = four projections + embedding (DoRA falls back to LoRA there), with layer-wise ranks and trained norms
    model = adapted_tiny(method=method, targets="apple", rank_strategy="budget", train_norms=True)
    expected = logits_of(model, ids)
    save_adapter(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = PeftModel.from_pretrained(make_tiny(), str(tmp_path))
    assert type(plain.base_model.model.transformer.layers[0].attn.qkv_proj).__module__.startswith("peft.")
    torch.testing.assert_close(logits_of(plain, ids), expected, atol=ATOL, rtol=0)


def _stock_and_fast(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], dropout: float, method: str = "dora"
) -> tuple[nn.Module, nn.Module]:
    """elmtune's layers (fast DoRA, plain LoRA's ``addmm``) and peft's own, with the same non-trivial adapter."""
    cfg = AdapterConfig(method=method, targets="all", r=4, alpha=8, dropout=dropout)
    fast = apply_adapter(make_tiny(), cfg)
    stock_base = make_tiny()
    lora_config = build_lora_config(stock_base, cfg)
    lora_config._custom_modules = None  # peft's own LoRA/DoRA layers
    for param in stock_base.parameters():
        param.requires_grad_(False)
    stock = get_peft_model(stock_base, lora_config)
    for m in (fast, stock):
        torch.manual_seed(5)  # same A in both
        for name, param in m.named_parameters():
            if "lora_A" in name:
                with torch.no_grad():
                    param.copy_(torch.randn_like(param) * 0.1)
        perturb(m)
    return fast, stock


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_elmtune_layers_equal_peft_layers_without_dropout(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], ids: torch.Tensor, method: str
) -> None:
    fast, stock = _stock_and_fast(make_tiny, perturb, dropout=0.0, method=method)
    assert type(fast.base_model.model.transformer.layers[0].attn.qkv_proj).__name__ == "ElmLoraLinear"
    assert type(stock.base_model.model.transformer.layers[0].attn.qkv_proj).__name__ == "Linear"
    outputs, grads = [], []
    for m in (fast, stock):
        m.train()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        outputs.append(loss.detach())
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_fast_dora_equals_peft_dora_in_eval_with_dropout(
    logits_of: Callable[..., torch.Tensor],
    make_tiny: Callable[..., nn.Module],
    perturb: Callable[..., None],
    ids: torch.Tensor,
) -> None:
    fast, stock = _stock_and_fast(make_tiny, perturb, dropout=0.3)
    torch.testing.assert_close(logits_of(fast.eval(), ids), logits_of(stock.eval(), ids), atol=ATOL, rtol=0)


def test_fast_dora_under_dropout_is_corenets_formula(make_tiny: Callable[..., nn.Module]) -> None:
    """out = Wx + (m/||W+sBA|| - 1) Wx + (m/||W+sBA||) s B A dropout(x), with the same dropout mask."""
    model = apply_adapter(make_tiny(), AdapterConfig(method="dora", targets="proj_2", r=4, alpha=8, dropout=0.5))
    layer = model.base_model.model.transformer.layers[1].ffn.proj_2
    torch.manual_seed(0)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)
        layer.lora_magnitude_vector["default"].weight.mul_(1.1)
    layer.train()
    x = torch.randn(3, 5, layer.in_features)
    torch.manual_seed(11)
    got = layer(x)
    w = layer.base_layer.weight
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = layer.scaling["default"]
    m = layer.lora_magnitude_vector["default"].weight
    torch.manual_seed(11)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    ratio = m / torch.linalg.norm(w + s * b @ a, dim=1)
    wx = x @ w.T
    expected = wx + (ratio - 1) * wx + ratio * s * (dropped @ a.T @ b.T)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dora_eval_cache_follows_weight_updates(
    logits_of: Callable[..., torch.Tensor],
    make_tiny: Callable[..., nn.Module],
    perturb: Callable[..., None],
    ids: torch.Tensor,
    adapted_tiny: Callable[..., nn.Module],
) -> None:
    model = adapted_tiny(method="dora", targets="q,proj_1")
    first = logits_of(model, ids)
    assert torch.equal(logits_of(model, ids), first)  # cached norms reused
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.mul_(1.5)  # an in-place update, as an optimizer step makes
    updated = logits_of(model, ids)
    assert not torch.equal(updated, first)
    for module in model.modules():
        getattr(module, "_caches", {}).clear()
    torch.testing.assert_close(logits_of(model, ids), updated, atol=1e-6, rtol=0)
