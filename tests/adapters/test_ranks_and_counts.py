"""Layer-wise ranks on the 270M geometry (hand-computed) and trainable-parameter counts (Apple's recipe).

The 270M model is built on the meta device: shapes only, no weights, so these tests are fast.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from elmtune.adapters import AdapterConfig, apply_adapter, module_ranks, resolve_targets, trainable_parameter_report
from elmtune.adapters.ranks import module_alpha, rank_and_alpha_patterns
from elmtune.models import OpenELMConfig, OpenELMForCausalLM

# 270M widths (openelm-spec §3.2): qkv_proj rows per layer and FFN width per layer.
QKV_ROWS = [1152] * 5 + [1536] * 7 + [1920] * 4
FFN = [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120]

# Hand-computed (see the module docstring of elmtune.adapters.ranks for the rules), r = 32.
# proportional: qkv mean width 1512 -> 32*1152/1512 = 24.4, 32*1536/1512 = 32.5, 32*1920/1512 = 40.6.
PROPORTIONAL_QKV = [24] * 5 + [33] * 7 + [41] * 4
# proportional FFN: mean width 2912; 32*768/2912 = 8.4 ... 32*5120/2912 = 56.3.
PROPORTIONAL_FFN = [8, 11, 14, 17, 20, 23, 28, 31, 34, 37, 39, 42, 48, 51, 53, 56]
# budget qkv: c = 32 * 44672 / 68,861,952 = 0.020759; 1152c = 23.9, 1536c = 31.9, 1920c = 39.9.
BUDGET_QKV = [24] * 5 + [32] * 7 + [40] * 4
# budget proj_2 (in = ffn, out = 1280): c = 2,146,304 / 225,312,768 = 0.0095259.
BUDGET_PROJ_2 = [7, 10, 12, 15, 17, 20, 24, 27, 29, 32, 34, 37, 41, 44, 46, 49]


def meta_270m() -> OpenELMForCausalLM:
    with torch.device("meta"):
        return OpenELMForCausalLM(OpenELMConfig.from_preset("270M"))


@pytest.fixture(scope="module")
def model_270m() -> OpenELMForCausalLM:
    return meta_270m()


def ranks_of(model: OpenELMForCausalLM, strategy: str, kind: str, targets: str = "all") -> list[int]:
    plan = resolve_targets(model, AdapterConfig(targets=targets, rank_strategy=strategy))
    ranks = module_ranks(plan.targets, 32, strategy)
    return [ranks[t.name] for t in plan.targets if t.kind == kind]


def test_uniform(model_270m: OpenELMForCausalLM) -> None:
    assert ranks_of(model_270m, "uniform", "proj_1") == [32] * 16


def test_proportional_matches_hand_computed(model_270m: OpenELMForCausalLM) -> None:
    assert ranks_of(model_270m, "proportional", "qkv_proj") == PROPORTIONAL_QKV
    assert ranks_of(model_270m, "proportional", "out_proj") == PROPORTIONAL_QKV  # widths 768/1024/1280, same ratios
    assert ranks_of(model_270m, "proportional", "proj_1") == PROPORTIONAL_FFN
    assert ranks_of(model_270m, "proportional", "proj_2") == PROPORTIONAL_FFN
    # sub-projections follow their own rows: v has n_kv * 64 = 192/256/320 rows, the same ratios as q
    assert ranks_of(model_270m, "proportional", "v", targets="q,v") == PROPORTIONAL_QKV
    assert sum(PROPORTIONAL_FFN) / 16 == pytest.approx(32, abs=0.5)


def test_budget_matches_hand_computed_and_keeps_the_total(model_270m: OpenELMForCausalLM) -> None:
    assert ranks_of(model_270m, "budget", "qkv_proj") == BUDGET_QKV
    assert ranks_of(model_270m, "budget", "proj_2") == BUDGET_PROJ_2
    qkv_params = sum(r * (rows + 1280) for r, rows in zip(BUDGET_QKV, QKV_ROWS, strict=True))
    assert qkv_params == 1_434_624  # vs uniform 32 * 44,672 = 1,429,504: equal up to rounding (0.36 %)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uniform = trainable_parameter_report(apply_adapter(meta_270m(), AdapterConfig(targets="all"))).trainable
        budget = trainable_parameter_report(
            apply_adapter(meta_270m(), AdapterConfig(targets="all", rank_strategy="budget"))
        ).trainable
    assert uniform == 9_449_472 - 1_064_960
    assert abs(budget - uniform) / uniform < 0.005


def test_patterns_keep_the_scaling(model_270m: OpenELMForCausalLM) -> None:
    cfg = AdapterConfig(targets="attn", rank_strategy="proportional", alpha=64)
    rank_pattern, alpha_pattern = rank_and_alpha_patterns(resolve_targets(model_270m, cfg).targets, cfg)
    key = r"transformer\.layers\.0\.attn\.qkv_proj"
    assert rank_pattern[key] == 24 and alpha_pattern[key] == 48.0  # alpha / r stays 64 / 32
    assert r"transformer\.layers\.5\.attn\.qkv_proj" in rank_pattern  # 33 != 32
    assert all(rank != 32 for rank in rank_pattern.values())
    assert module_alpha(32, 32, 8, use_rslora=True) == pytest.approx(32 * math.sqrt(8 / 32))  # alpha/sqrt(r) kept


def test_peft_applies_the_patterns(model_270m: OpenELMForCausalLM) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(meta_270m(), AdapterConfig(targets="attn", rank_strategy="proportional", alpha=64))
    report = trainable_parameter_report(model)
    assert [m.rank for m in report.modules if m.kind == "qkv_proj"] == PROPORTIONAL_QKV
    layer0 = model.base_model.model.transformer.layers[0].attn.qkv_proj
    assert layer0.scaling["default"] == pytest.approx(2.0)


def test_apple_recipe_counts() -> None:
    """r 32 on the four projections plus the embedding: 9,449,472 trainable, 1,064,960 in the embedding."""
    expected_projections = sum(
        32 * ((rows + 1280) + (1280 + rows * 2 // 3) + (2 * ffn + 1280) + (1280 + ffn))
        for rows, ffn in zip(QKV_ROWS, FFN, strict=True)
    )  # out_proj input = query rows = 2/3 of the qkv rows with 4 query heads per kv head
    assert expected_projections + 32 * (32000 + 1280) == 9_449_472
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lora = trainable_parameter_report(apply_adapter(meta_270m(), AdapterConfig(targets="apple")))
        dora = trainable_parameter_report(apply_adapter(meta_270m(), AdapterConfig(method="dora", targets="apple")))
    assert (lora.trainable, lora.embedding, lora.magnitude) == (9_449_472, 1_064_960, 0)
    assert lora.base_parameters == 271_527_168
    # DoRA adds one magnitude per output row of each adapted Linear; the embedding stays LoRA
    rows = sum(q + 1280 + 2 * f + 1280 for q, f in zip(QKV_ROWS, FFN, strict=True))
    assert rows == 158_336
    assert (dora.trainable, dora.embedding, dora.magnitude) == (9_449_472 + 158_336, 1_064_960, 158_336)
