"""AdapterConfig: defaults, validation, dict/YAML round trips, and the LoraConfig it becomes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from torch import nn

from elmtune.adapters import AdapterConfig, build_lora_config
from elmtune.adapters.config import parse_layers, parse_targets
from elmtune.errors import ConfigError, UsageError


def test_defaults_are_apples_recipe() -> None:
    cfg = AdapterConfig()
    assert (cfg.method, cfg.r, cfg.alpha, cfg.dropout, cfg.targets) == ("lora", 32, 32.0, 0.1, ("all",))
    assert cfg.rank_strategy == "uniform" and cfg.layers is None and not cfg.use_rslora and not cfg.train_norms


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AdapterConfig().r = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("method", "ia3", "adapter.method must be one of lora, dora, got 'ia3'"),
        ("r", 0, "adapter.r must be a positive integer, got 0"),
        ("r", 2.5, "adapter.r must be a positive integer, got 2.5"),
        ("alpha", -1, "adapter.alpha must be a positive number, got -1"),
        ("dropout", 1.0, "adapter.dropout must be in [0, 1), not 1.0"),
        ("rank_strategy", "random", "adapter.rank_strategy must be one of"),
        ("init", "xavier", "adapter.init must be one of"),
        ("targets", "", "adapter.targets is empty"),
        ("layers", "3-1", "adapter.layers range '3-1' is descending; write it as '1-3'"),
        ("layers", "a-b", "cannot read adapter.layers 'a-b'"),
        ("use_rslora", "yes", "adapter.use_rslora must be true or false, got 'yes'"),
    ],
)
def test_validation_messages_name_the_key(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        AdapterConfig(**{field: value})
    assert fragment in str(err.value) and err.value.key == f"adapter.{field}"
    assert isinstance(err.value, UsageError)  # the CLI exits with the usage-error code


def test_orthogonal_init_needs_even_uniform_ranks() -> None:
    with pytest.raises(ConfigError, match="adapter.init 'orthogonal' needs an even r"):
        AdapterConfig(init="orthogonal", r=7)
    with pytest.raises(ConfigError, match="uniform"):
        AdapterConfig(init="orthogonal", rank_strategy="budget")
    assert AdapterConfig(init="pissa_niter_4").rewrites_base
    assert not AdapterConfig(init="gaussian").rewrites_base


def test_targets_and_layers_are_normalised() -> None:
    assert parse_targets("q, v") == ("q", "v")
    assert parse_targets(["q", "q", "proj_2"]) == ("q", "proj_2")
    assert parse_targets(r"re:.*layers\.(1|2)\..*") == (r"re:.*layers\.(1|2)\..*",)  # a regex is never split
    assert parse_layers("8-11") == (8, 9, 10, 11)
    assert parse_layers("0, 2,5-6") == (0, 2, 5, 6)
    assert parse_layers([3, 1, 3]) == (1, 3)
    assert parse_layers(4) == (4,)
    assert parse_layers("all") is None


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown adapter key\(s\) 'lora_r'; known: method, r, alpha, dropout"):
        AdapterConfig.from_dict({"lora_r": 8})
    with pytest.raises(ConfigError, match=r"^adapter.r must be int, got 'eight'$"):
        AdapterConfig.from_dict({"r": "eight"})
    assert AdapterConfig.from_dict({"alpha": 16, "targets": ["q"]}).alpha == 16.0  # YAML ints are floats here


def test_dict_round_trip() -> None:
    cfg = AdapterConfig(method="dora", r=8, alpha=16, targets="q,v", layers="1-2", rank_strategy="budget")
    data = cfg.to_dict()
    assert data["targets"] == ["q", "v"] and data["layers"] == [1, 2]
    assert AdapterConfig.from_dict(data) == cfg


def test_from_yaml_top_level_and_recipe_section(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text("method: dora\nr: 16\ntargets: [q, v]\nlayers: 0-1\n")
    assert AdapterConfig.from_yaml(flat) == AdapterConfig(method="dora", r=16, targets=("q", "v"), layers=(0, 1))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: 270M\nadapter:\n  targets: apple\n  dropout: 0.0\n")
    assert AdapterConfig.from_yaml(recipe) == AdapterConfig(targets=("apple",), dropout=0.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rank: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown adapter key\(s\) 'rank'"):
        AdapterConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="adapter config .*missing.yaml does not exist"):
        AdapterConfig.from_yaml(tmp_path / "missing.yaml")


def test_lora_config_is_explicit(make_tiny: Callable[..., nn.Module]) -> None:
    model = make_tiny()
    cfg = AdapterConfig(method="dora", r=8, alpha=16, dropout=0.05, targets=("attn",), use_rslora=True, init="gaussian")
    lora = build_lora_config(model, cfg)
    expected = {f"transformer.layers.{i}.attn.{m}" for i in range(4) for m in ("qkv_proj", "out_proj")}
    assert set(lora.target_modules) == expected
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 16.0, 0.05)
    assert lora.use_dora and lora.use_rslora and lora.init_lora_weights == "gaussian"
    assert lora.rank_pattern == {} and lora.alpha_pattern == {}  # uniform ranks need no pattern
    assert lora.modules_to_save is None
    with_norms = build_lora_config(model, dataclasses.replace(cfg, train_norms=True, layers=(0,)))
    assert with_norms.modules_to_save == [
        "transformer.layers.0.attn_norm",
        "transformer.layers.0.attn.q_norm",
        "transformer.layers.0.attn.k_norm",
        "transformer.layers.0.ffn_norm",
        "transformer.norm",
    ]
