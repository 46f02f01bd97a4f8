"""Per-layer geometry against the spec's computed tables and parameter counts."""

import pytest
import torch

from elmtune.models import OpenELMConfig, OpenELMForCausalLM
from elmtune.models.geometry import make_divisible

# Spec section 3.2: OpenELM-270M, every layer:
# (n_q, n_kv, qkv_proj rows, out_proj cols, proj_1 rows, proj_2 cols)
TABLE_270M = [
    (12, 3, 1152, 768, 1536, 768),
    (12, 3, 1152, 768, 2048, 1024),
    (12, 3, 1152, 768, 2560, 1280),
    (12, 3, 1152, 768, 3072, 1536),
    (12, 3, 1152, 768, 3584, 1792),
    (16, 4, 1536, 1024, 4096, 2048),
    (16, 4, 1536, 1024, 5120, 2560),
    (16, 4, 1536, 1024, 5632, 2816),
    (16, 4, 1536, 1024, 6144, 3072),
    (16, 4, 1536, 1024, 6656, 3328),
    (16, 4, 1536, 1024, 7168, 3584),
    (16, 4, 1536, 1024, 7680, 3840),
    (20, 5, 1920, 1280, 8704, 4352),
    (20, 5, 1920, 1280, 9216, 4608),
    (20, 5, 1920, 1280, 9728, 4864),
    (20, 5, 1920, 1280, 10240, 5120),
]

TOTALS = {"270M": 271_527_168, "450M": 457_179_136, "1_1B": 1_079_891_456, "3B": 3_036_647_424}


def _expand(runs):
    return [value for value, count in runs for _ in range(count)]


def test_make_divisible_rounds_and_bumps():
    assert make_divisible(640.0, 256) == 768  # ties go up: 640 + 128 = 768
    assert make_divisible(857.6, 256) == 1024  # 768 < 0.9 * 857.6, so one more 256 (spec: 270M layer 5)
    assert make_divisible(10, 256) == 256  # never below the divisor


def test_270m_every_layer_matches_spec_table():
    config = OpenELMConfig.from_preset("270M")
    with torch.device("meta"):
        model = OpenELMForCausalLM(config)
    layers = model.transformer.layers
    assert len(layers) == 16
    for i, (n_q, n_kv, qkv, out_cols, p1, p2) in enumerate(TABLE_270M):
        assert config.num_query_heads[i] == n_q and config.num_kv_heads[i] == n_kv, i
        assert tuple(layers[i].attn.qkv_proj.weight.shape) == (qkv, 1280), i
        assert tuple(layers[i].attn.out_proj.weight.shape) == (1280, out_cols), i
        assert tuple(layers[i].ffn.proj_1.weight.shape) == (p1, 1280), i
        assert tuple(layers[i].ffn.proj_2.weight.shape) == (1280, p2), i
        assert tuple(layers[i].attn.q_norm.weight.shape) == (64,)


@pytest.mark.parametrize("size", list(TOTALS))
def test_parameter_counts_of_every_size(size):
    config = OpenELMConfig.from_preset(size)
    assert config.geometry.num_parameters == TOTALS[size]
    with torch.device("meta"):
        model = OpenELMForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == TOTALS[size]  # torch yields a shared tensor once
    assert model.output_weight() is model.get_input_embeddings().weight  # tied: counted once


def test_other_sizes_match_spec_lists():
    # Spec section 3.3.
    c11 = OpenELMConfig.from_preset("1_1B")
    assert c11.num_query_heads == _expand([(16, 3), (20, 7), (24, 8), (28, 6), (32, 4)])
    assert [c11.ffn_dims[i] for i in (0, 1, 13, 14, 27)] == [1024, 1280, 4608, 4608, 8192]
    c3 = OpenELMConfig.from_preset("3B")
    assert c3.num_query_heads == _expand([(12, 4), (16, 14), (20, 12), (24, 6)])
    assert c3.num_kv_heads == [q // 4 for q in c3.num_query_heads]
    assert c3.ffn_dims[:4] == [1536, 1792, 2048, 2560] and c3.ffn_dims[-1] == 12288
    c450 = OpenELMConfig.from_preset("450M")
    assert c450.num_query_heads == _expand([(12, 3), (16, 7), (20, 6), (24, 4)])
    assert c450.ffn_dims == [
        768,
        1024,
        1280,
        1536,
        1792,
        2304,
        2560,
        2816,
        3072,
        3328,
        3584,
        3840,
        4096,
        4352,
        4608,
        5120,
        5376,
        5632,
        5888,
        6144,
    ]


def test_tiny_preset_keeps_layer_wise_scaling():
    config = OpenELMConfig.from_preset("tiny")
    assert len(set(config.num_query_heads)) > 1 and len(set(config.ffn_dims)) > 1
    assert all(q % kv == 0 and q > kv for q, kv in zip(config.num_query_heads, config.num_kv_heads, strict=True))
    assert 1_000_000 < config.geometry.num_parameters < 10_000_000


def test_hub_ids_map_to_presets_and_stored_lists_win():
    assert OpenELMConfig.from_preset("apple/OpenELM-1_1B-Instruct").num_query_heads == (
        OpenELMConfig.from_preset("1_1B").num_query_heads
    )
    # A saved config's per-layer lists are read as they are (as hub config.json files carry them).
    stored = OpenELMConfig(
        num_transformer_layers=2,
        model_dim=64,
        head_dim=16,
        num_query_heads=[2, 4],
        num_kv_heads=[1, 2],
        ffn_multipliers=[1.0, 2.0],
    )
    assert stored.num_query_heads == [2, 4] and stored.num_kv_heads == [1, 2]
    assert stored.ffn_dims == [256, 256]  # make_divisible(64, 256) and make_divisible(128, 256)
    with pytest.raises(ValueError, match="ffn_multipliers"):
        OpenELMConfig(num_transformer_layers=3, ffn_multipliers=[1.0, 2.0, 3.0, 4.0])
