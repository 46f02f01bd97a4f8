"""Target resolution: presets, sub-projections with per-layer rows, names, regexes, layer subsets, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn

from elmtune.adapters import AdapterConfig, AdapterError, resolve_targets
from elmtune.adapters.targets import layer_index

LAYERS = range(4)  # the tiny preset


def names(model: nn.Module, **cfg: object) -> list[str]:
    return resolve_targets(model, AdapterConfig(**cfg)).names


@pytest.mark.parametrize(
    ("preset", "modules"),
    [
        ("attn", ["attn.qkv_proj", "attn.out_proj"]),
        ("mlp", ["ffn.proj_1", "ffn.proj_2"]),
        ("all", ["attn.qkv_proj", "attn.out_proj", "ffn.proj_1", "ffn.proj_2"]),
    ],
)
def test_openelm_presets(make_tiny: Callable[..., nn.Module], preset: str, modules: list[str]) -> None:
    expected = [f"transformer.layers.{i}.{m}" for i in LAYERS for m in modules]
    assert names(make_tiny(), targets=preset) == expected


def test_apple_preset_adds_the_embedding(make_tiny: Callable[..., nn.Module]) -> None:
    got = names(make_tiny(), targets="apple")
    assert got[0] == "transformer.token_embeddings"
    assert got[1:] == names(make_tiny(), targets="all")


def test_all_linear_equals_all_on_openelm(make_tiny: Callable[..., nn.Module]) -> None:
    assert names(make_tiny(), targets="all-linear") == names(make_tiny(), targets="all")


def test_sub_projections_use_each_layers_head_counts(make_tiny: Callable[..., nn.Module]) -> None:
    model = make_tiny()
    plan = resolve_targets(model, AdapterConfig(targets=("q", "v", "gate")))
    geometry = model.config.geometry
    for t in plan.targets:
        g = geometry.layers[t.layer]
        q, kv = g.num_query_heads * g.head_dim, g.num_kv_heads * g.head_dim
        expected_rows = {"q": (0, q), "v": (q + kv, q + 2 * kv), "gate": (0, g.ffn_dim)}[t.kind]
        assert t.rows == expected_rows
        assert t.name == f"{t.fused}.{t.kind}"
    assert [t.kind for t in plan.targets if t.layer == 0] == ["q", "v", "gate"]
    # the heads really differ between layers in the tiny preset, so per-layer rows are exercised
    assert len({plan.targets[0].rows, plan.targets[-3].rows}) == 2
    blocks = plan.row_blocks["transformer.layers.0.attn.qkv_proj"]
    g0 = geometry.layers[0]
    assert list(blocks) == ["q", "k", "v"] and blocks["v"][1] == g0.qkv_shape[0]


def test_explicit_names_regex_and_layers(make_tiny: Callable[..., nn.Module]) -> None:
    model = make_tiny()
    assert names(model, targets="out_proj", layers="1-2") == [
        "transformer.layers.1.attn.out_proj",
        "transformer.layers.2.attn.out_proj",
    ]
    assert names(model, targets=r"re:transformer\.layers\.[03]\.ffn\.proj_2") == [
        "transformer.layers.0.ffn.proj_2",
        "transformer.layers.3.ffn.proj_2",
    ]
    # the embedding is outside the blocks: a layer subset does not drop it
    assert names(model, targets="apple", layers=[3])[0] == "transformer.token_embeddings"
    assert all(layer_index(n) in (None, 3) for n in names(model, targets="apple", layers=[3]))


def test_zero_matches_lists_available_names(make_tiny: Callable[..., nn.Module]) -> None:
    with pytest.raises(AdapterError) as err:
        names(make_tiny(), targets="q_proj")
    message = str(err.value)
    assert "target 'q_proj' matches no Linear or Embedding module" in message
    for available in ("qkv_proj", "out_proj", "proj_1", "proj_2", "token_embeddings", "q, k, v, gate, up", "apple"):
        assert available in message
    assert "\n" not in message


def test_layer_errors_and_overlaps(make_tiny: Callable[..., nn.Module]) -> None:
    with pytest.raises(AdapterError, match=r"layers \[4, 5\] do not exist: this model has layers 0-3"):
        names(make_tiny(), targets="all", layers="3-5")
    with pytest.raises(AdapterError, match="'qkv_proj' is targeted whole and by its sub-projections"):
        names(make_tiny(), targets="qkv_proj,q")
    with pytest.raises(AdapterError, match="not a valid regex"):
        names(make_tiny(), targets="re:(")


def test_openelm_names_refused_on_other_models() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(AdapterError, match="target preset 'apple' names OpenELM modules.*all-linear.*q_proj"):
        names(model, targets="apple")
    with pytest.raises(AdapterError, match="sub-projection 'q'"):
        names(model, targets="q")
    assert names(model, targets="all-linear") == [
        f"model.layers.0.{m}"
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
        + ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]
