"""Training-time properties: what is trainable, fp32 adapters on half-precision bases, base weights frozen,
``disable_adapters`` as the DPO reference."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from elmtune.adapters import (
    AdapterConfig,
    AdapterError,
    apply_adapter,
    disable_adapters,
    load_adapter,
    save_adapter,
    trainable_parameter_report,
)


def apply(model: nn.Module, **cfg: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return apply_adapter(model, AdapterConfig(**{"r": 4, "alpha": 8, **cfg}))


def test_only_adapter_parameters_are_trainable(make_tiny: Callable[..., nn.Module]) -> None:
    model = apply(make_tiny(), method="dora", targets="apple,", train_norms=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(("lora_" in n) or (".modules_to_save." in n) for n in trainable)
    report = trainable_parameter_report(model)
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.norms == 4 * (2 * 128 + 2 * 16) + 128  # per layer two d-norms and two head_dim norms, plus final


def test_base_weights_unchanged_after_an_optimizer_step(make_tiny: Callable[..., nn.Module], ids: torch.Tensor) -> None:
    model = apply(make_tiny(), method="dora", targets="q,v,proj_1,token_embeddings", train_norms=True).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    moved = [n for n, p in model.named_parameters() if n in adapter and not torch.equal(p, adapter[n])]
    assert any("lora_B" in n for n in moved) and any("lora_magnitude_vector" in n for n in moved)
    assert any("modules_to_save" in n for n in moved)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adapters_stay_fp32_on_a_half_precision_base(
    make_tiny: Callable[..., nn.Module], ids: torch.Tensor, tmp_path: Path, dtype: torch.dtype
) -> None:
    model = apply(
        make_tiny(dtype=dtype),
        method="dora",
        targets="token_embeddings,q,out_proj,proj_1",
        layers="0-1",
        train_norms=True,
    )
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else dtype), name
    model.train()
    out = model(input_ids=ids, labels=ids)
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    save_adapter(model, tmp_path)
    loaded = load_adapter(make_tiny(dtype=dtype), tmp_path)
    assert {p.dtype for n, p in loaded.named_parameters() if "lora_" in n} == {torch.float32}


def test_disable_adapters_is_the_base_model(
    make_tiny: Callable[..., nn.Module], perturb: Callable[..., None], ids: torch.Tensor
) -> None:
    with torch.no_grad():
        base = make_tiny()(input_ids=ids).logits
    model = apply(make_tiny(), method="dora", targets="q,proj_2,token_embeddings", train_norms=True)
    perturb(model)
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with disable_adapters(model):
            torch.testing.assert_close(model(input_ids=ids).logits, base, atol=1e-5, rtol=0)
            with disable_adapters(model):  # nested use keeps them off
                torch.testing.assert_close(model(input_ids=ids).logits, base, atol=1e-5, rtol=0)
            torch.testing.assert_close(model(input_ids=ids).logits, base, atol=1e-5, rtol=0)
        assert torch.equal(model(input_ids=ids).logits, adapted)
        with pytest.raises(RuntimeError, match="boom"), disable_adapters(model):
            raise RuntimeError("boom")
        assert torch.equal(model(input_ids=ids).logits, adapted)  # back on after an exception


def test_disable_adapters_keeps_trainable_flags(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    model = apply(make_tiny(), targets="attn")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with disable_adapters(model):
        pass
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    save_adapter(model, tmp_path)
    frozen = load_adapter(make_tiny(), tmp_path)
    with disable_adapters(frozen):
        pass
    assert not any(p.requires_grad for p in frozen.parameters())


def test_pissa_is_saved_as_lora_on_the_original_base(
    make_tiny: Callable[..., nn.Module], ids: torch.Tensor, tmp_path: Path
) -> None:
    model = apply(make_tiny(), targets="q,proj_2", init="pissa")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.01)  # "training"
        expected = model(input_ids=ids).logits
    with pytest.raises(AdapterError, match="rewrote the base weights"), disable_adapters(model):
        pass
    save_adapter(model, tmp_path)
    loaded = load_adapter(make_tiny(), tmp_path)  # the original base weights, never rewritten by loading
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    assert loaded.peft_config["default"].r == 8  # rank doubles: s(BA - B0A0) = s [B, -B0][A; A0]
