"""Adapter directories: PEFT files, elmtune metadata, fingerprint checks and refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from elmtune.adapters import AdapterConfig, AdapterError, apply_adapter, load_adapter, read_metadata, save_adapter
from elmtune.models import OpenELMConfig, OpenELMForCausalLM


def saved(make_tiny: Callable[..., nn.Module], out: Path, **cfg: object) -> nn.Module:
    model = apply_adapter(make_tiny(), AdapterConfig(**{"r": 4, **cfg}))
    save_adapter(model, out, base_name="tiny")
    return model


def test_directory_layout_and_metadata(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    cfg = AdapterConfig(method="dora", r=4, targets=("q", "v", "proj_2"), layers="1-3", rank_strategy="proportional")
    model = apply_adapter(make_tiny(), cfg)
    save_adapter(model, tmp_path, base_name="tiny")
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    peft_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["use_dora"] is True
    assert peft_config["base_model_name_or_path"] == "tiny"
    assert "transformer.layers.1.attn.qkv_proj.q" in peft_config["target_modules"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.transformer.layers.1.attn.qkv_proj.v.lora_magnitude_vector" in tensors
    assert all(t.dtype == torch.float32 for t in tensors.values())

    meta = read_metadata(tmp_path)
    geometry = make_tiny().config.geometry
    assert meta["base_model"] == "tiny"
    assert meta["base"]["fingerprint"] == geometry.fingerprint()
    assert AdapterConfig.from_dict(meta["adapter_config"]) == cfg
    g1 = geometry.layers[1]
    q, kv = g1.q_rows, g1.kv_rows
    assert meta["row_blocks"]["transformer.layers.1.attn.qkv_proj"] == {
        "q": [0, q],
        "k": [q, q + kv],
        "v": [q + kv, q + 2 * kv],
    }
    assert "transformer.layers.0.attn.qkv_proj" not in meta["row_blocks"]  # layer 0 is not in the subset


def test_new_modules_follow_the_base_models_mode(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    model = saved(make_tiny, tmp_path, targets="q,proj_2", dropout=0.2)
    assert not any(m.training for m in model.modules())
    assert all(m.training for m in apply_adapter(make_tiny().train(), AdapterConfig(r=2)).modules())
    assert not any(m.training for m in load_adapter(make_tiny(), tmp_path, is_trainable=True).modules())


def test_fingerprint_mismatch_names_the_first_layer(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    saved(make_tiny, tmp_path, targets="all")
    other = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny", ffn_multipliers=[0.5, 2.0]))
    mine, theirs = make_tiny().config.geometry.layers, other.config.geometry.layers
    first = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a.ffn_dim != b.ffn_dim)
    with pytest.raises(AdapterError) as err:
        load_adapter(other, tmp_path)
    message = str(err.value)
    assert f"layer {first} is " in message and "trained on a different base model" in message
    assert str(mine[first].ffn_dim) in message and str(theirs[first].ffn_dim) in message and "\n" not in message
    fewer = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny", num_transformer_layers=3, ffn_multipliers=[0.5, 4.0]))
    with pytest.raises(AdapterError, match="different base model"):
        load_adapter(fewer, tmp_path)
    assert not any("lora" in n for n, _ in other.named_parameters())  # refused before anything was changed


def test_refusals(make_tiny: Callable[..., nn.Module], tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(make_tiny(), tmp_path / "missing")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterError, match="pickle checkpoint.*only safetensors"):
        load_adapter(make_tiny(), pickled)
    good = tmp_path / "good"
    model = saved(make_tiny, good, targets="attn")
    with pytest.raises(AdapterError, match="already carries adapters"):
        load_adapter(model, good)
    with pytest.raises(AdapterError, match="already carries adapters"):
        apply_adapter(model, AdapterConfig())
