"""Adapter arithmetic: every method against its formula on small matrices (numpy references), the refusals, and an
end-to-end ``cat`` on the tiny model that equals the weighted sum of the merged updates."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from elmtune.adapters import AdapterConfig, AdapterError, apply_adapter, fuse_split_modules, load_adapter, save_adapter
from elmtune.merging import AdapterCheckpoint
from elmtune.merging.combine import CombineOptions, combine_adapters, combine_checkpoints
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model, saved_keys

MODULE = "transformer.layers.0.attn.out_proj"
KEY_A, KEY_B = f"base_model.model.{MODULE}.lora_A.weight", f"base_model.model.{MODULE}.lora_B.weight"
WEIGHTS = (0.7, -0.4)


def checkpoint(a, b, alpha, *, rslora=False, dora=False, module=MODULE, metadata=None, extra=None):
    tensors = {f"base_model.model.{module}.lora_A.weight": a, f"base_model.model.{module}.lora_B.weight": b}
    tensors |= extra or {}
    config = {"peft_type": "LORA", "r": a.shape[0], "lora_alpha": alpha, "use_rslora": rslora, "use_dora": dora}
    return AdapterCheckpoint(tensors, config | {"target_modules": [module]}, metadata)


@pytest.fixture
def pair():
    """Two rank-3 adapters on one (8 x 6) module, with different alphas: s = 6/3 = 2 and 1.5/3 = 0.5."""
    g = torch.Generator().manual_seed(0)
    a1, b1, a2, b2 = (torch.randn(shape, generator=g) for shape in [(3, 6), (8, 3), (3, 6), (8, 3)])
    return [checkpoint(a1, b1, 6.0), checkpoint(a2, b2, 1.5)], [(a1, b1, 2.0), (a2, b2, 0.5)]


def combined(checkpoints, **options):
    result = combine_checkpoints(checkpoints, CombineOptions(**options))
    return result, result.checkpoint.tensors[KEY_A].double().numpy(), result.checkpoint.tensors[KEY_B].double().numpy()


def weighted_sum(raw, weights=WEIGHTS):
    return sum(w * s * (b.double() @ a.double()).numpy() for w, (a, b, s) in zip(weights, raw, strict=True))


def factor_weights(raw, weights=WEIGHTS):
    """peft's factor weights: sign(w s) sqrt|w s| on A, sqrt|w s| on B."""
    ws = [w * s for w, (_, _, s) in zip(weights, raw, strict=True)]
    return [math.copysign(math.sqrt(abs(x)), x) for x in ws], [math.sqrt(abs(x)) for x in ws]


def ties_reference(factors, weights, density, sign_method="total"):
    """TIES (Yadav et al. 2023) as peft weights it: trim to the top-k magnitudes, elect a sign per entry from the
    trimmed values, average the weighted entries that agree with it."""
    trimmed = []
    for x in factors:
        k = int(density * x.size)
        keep = np.zeros(x.size, dtype=bool)
        keep[np.argsort(-np.abs(x).ravel(), kind="stable")[:k]] = True
        trimmed.append(np.where(keep.reshape(x.shape), x, 0.0))
    stack = np.stack(trimmed)
    votes = stack.sum(0) if sign_method == "total" else np.sign(stack).sum(0)
    elected = np.where(votes >= 0, 1.0, -1.0)
    agree = np.sign(stack) == elected
    total = sum(w * t * m for w, t, m in zip(weights, stack, agree, strict=True))
    return total / np.maximum(agree.sum(0), 1)


def test_cat_is_the_exact_weighted_sum(pair):
    checkpoints, raw = pair
    result, a, b = combined(checkpoints, method="cat", weights=WEIGHTS)
    np.testing.assert_allclose(
        a, np.concatenate([w * s * x.double().numpy() for w, (x, _, s) in zip(WEIGHTS, raw, strict=True)])
    )
    np.testing.assert_allclose(b, np.concatenate([y.double().numpy() for _, y, _ in raw], axis=1))
    np.testing.assert_allclose(b @ a, weighted_sum(raw), atol=1e-5)
    assert result.ranks == {MODULE: 6} and result.deviation[MODULE] < 1e-6
    config = result.checkpoint.peft_config
    assert config["r"] == 6 and config["lora_alpha"] == 6.0 and not config["use_rslora"]  # scaling 1


def test_linear_combines_the_factors_as_peft_does(pair):
    checkpoints, raw = pair
    result, a, b = combined(checkpoints, method="linear", weights=WEIGHTS)
    wa, wb = factor_weights(raw)
    np.testing.assert_allclose(a, sum(w * x.double().numpy() for w, (x, _, _) in zip(wa, raw, strict=True)), atol=1e-6)
    np.testing.assert_allclose(b, sum(w * y.double().numpy() for w, (_, y, _) in zip(wb, raw, strict=True)), atol=1e-6)
    target = weighted_sum(raw)  # cross terms B_i A_j make it differ from the weighted sum, and the report says so
    expected_deviation = np.linalg.norm(b @ a - target) / np.linalg.norm(target)
    assert result.deviation[MODULE] == pytest.approx(expected_deviation, rel=1e-4) and expected_deviation > 0.1


@pytest.mark.parametrize("rank", [2, 6])
def test_svd_is_the_best_low_rank_approximation(pair, rank):
    checkpoints, raw = pair
    result, a, b = combined(checkpoints, method="svd", weights=WEIGHTS, svd_rank=rank)
    u, s, vh = np.linalg.svd(weighted_sum(raw))
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]  # Eckart-Young
    np.testing.assert_allclose(b @ a, best, atol=1e-5)
    assert a.shape == (min(rank, 6), 6) and result.ranks[MODULE] == min(rank, 6)
    if rank == 6:  # the sum has rank <= 3 + 3: exact
        np.testing.assert_allclose(b @ a, weighted_sum(raw), atol=1e-5)


@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_ties_trims_elects_and_averages_each_factor(pair, sign_method):
    checkpoints, raw = pair
    _, a, b = combined(checkpoints, method="ties", weights=WEIGHTS, density=0.5, majority_sign=sign_method)
    wa, wb = factor_weights(raw)
    expected_a = ties_reference([x.double().numpy() for x, _, _ in raw], wa, 0.5, sign_method)
    expected_b = ties_reference([y.double().numpy() for _, y, _ in raw], wb, 0.5, sign_method)
    np.testing.assert_allclose(a, expected_a, atol=1e-6)
    np.testing.assert_allclose(b, expected_b, atol=1e-6)


def dare_candidates(values, weights, density, ties):
    """Every value an entry can take after DARE: each input kept (and rescaled by 1/density) or dropped."""
    out = []
    for mask in itertools.product([0.0, 1.0], repeat=len(values)):
        kept = np.array([m * v / density for m, v in zip(mask, values, strict=True)])
        if not ties:
            out.append(sum(w * k for w, k in zip(weights, kept, strict=True)))
            continue
        elected = 1.0 if kept.sum() >= 0 else -1.0
        agree = np.sign(kept) == elected
        out.append(sum(w * k for w, k, g in zip(weights, kept, agree, strict=True) if g) / max(agree.sum(), 1))
    return np.array(out)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_drops_and_rescales_entries(method):
    g = torch.Generator().manual_seed(1)
    raw = [(torch.randn(4, 40, generator=g), torch.randn(50, 4, generator=g), s) for s in (1.0, 2.0)]
    checkpoints = [checkpoint(a, b, 4.0 * s) for a, b, s in raw]
    result, a, _ = combined(checkpoints, method=method, weights=WEIGHTS, density=0.5, seed=3)
    wa, _ = factor_weights(raw)
    inputs = np.stack([x.double().numpy() for x, _, _ in raw])  # (2, 4, 40)
    for index in np.ndindex(a.shape):
        candidates = dare_candidates(inputs[(slice(None), *index)], wa, 0.5, ties=method == "dare_ties")
        assert np.isclose(candidates, a[index], atol=1e-6).any(), index
    assert 0.15 < (a == 0).mean() < 0.35  # both inputs dropped: probability (1 - 0.5)^2
    again = combine_checkpoints(checkpoints, CombineOptions(method=method, weights=WEIGHTS, density=0.5, seed=3))
    assert torch.equal(again.checkpoint.tensors[KEY_A], result.checkpoint.tensors[KEY_A])  # seeded
    other = combine_checkpoints(checkpoints, CombineOptions(method=method, weights=WEIGHTS, density=0.5, seed=4))
    assert not torch.equal(other.checkpoint.tensors[KEY_A], result.checkpoint.tensors[KEY_A])


def test_dare_with_density_one_is_linear(pair):
    checkpoints, _ = pair
    _, a_dare, b_dare = combined(checkpoints, method="dare_linear", weights=WEIGHTS, density=1.0)
    _, a_lin, b_lin = combined(checkpoints, method="linear", weights=WEIGHTS)
    np.testing.assert_array_equal(a_dare, a_lin)
    np.testing.assert_array_equal(b_dare, b_lin)


def test_refusals_name_the_problem(pair):
    (first, second), (raw1, _) = pair
    a, b, _ = raw1
    cases = [
        ([first, checkpoint(a, b, 6.0, dora=True)], {}, "DoRA adapters cannot be combined"),
        ([first, checkpoint(a, b, 6.0, rslora=True)], {}, "rsLoRA"),
        ([first, checkpoint(a, b, 6.0, module="transformer.layers.1.attn.out_proj")], {}, "adapt different modules"),
        ([first, checkpoint(a[:2], b[:, :2], 6.0)], {"method": "linear"}, "needs equal ranks"),
        ([first, second], {"weights": (1.0,)}, "one weight per adapter"),
        (
            [first, checkpoint(a, b, 6.0, extra={"base_model.model.transformer.norm.weight": torch.ones(8)})],
            {},
            "train_norms",
        ),
    ]
    for checkpoints, options, message in cases:
        with pytest.raises(AdapterError, match=message):
            combine_checkpoints(checkpoints, CombineOptions(**options))
    combine_checkpoints([first, checkpoint(a[:2], b[:, :2], 6.0)], CombineOptions(method="cat"))  # ranks may differ


def test_different_bases_are_refused(pair):
    (first, second), _ = pair
    meta = {"base_model": "apple/OpenELM-270M", "base": {"fingerprint": "x"}}
    one = AdapterCheckpoint(first.tensors, first.peft_config, meta)
    other_shape = AdapterCheckpoint(second.tensors, second.peft_config, meta | {"base": {"fingerprint": "y"}})
    other_name = AdapterCheckpoint(
        second.tensors, second.peft_config, meta | {"base_model": "apple/OpenELM-270M-Instruct"}
    )
    with pytest.raises(AdapterError, match="bases of different shapes"):
        combine_checkpoints([one, other_shape], CombineOptions())
    with pytest.raises(AdapterError, match="OpenELM-270M-Instruct.*--allow-different-bases"):
        combine_checkpoints([one, other_name], CombineOptions())
    combined_ = combine_checkpoints([one, other_name], CombineOptions(allow_different_bases=True))
    assert combined_.checkpoint.metadata["combination"]["method"] == "linear"


def test_combined_adapter_merges_to_the_weighted_sum_of_updates(tmp_path: Path, merge_in_memory):
    torch.manual_seed(0)
    base = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).eval()
    base.save_pretrained(tmp_path / "base")
    dirs = []
    for seed, alpha in ((1, 8.0), (2, 2.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = apply_adapter(
                load_model(tmp_path / "base"),
                AdapterConfig(r=4, alpha=alpha, targets=("v", "proj_2", "token_embeddings")),
            )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name or "lora_embedding_A" in name:
                    param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        dirs.append(save_adapter(model, tmp_path / f"a{seed}", base_name="tiny"))

    base_sd = {k: base.state_dict()[k] for k in saved_keys(base)}  # Apple's keys: the tied head is the embedding
    merged = [merge_in_memory(base_sd, d) for d in dirs]
    expected = {k: v + sum(w * (m[k] - v) for w, m in zip(WEIGHTS, merged, strict=True)) for k, v in base_sd.items()}
    for method in ("cat", "svd"):
        options = CombineOptions(method=method, weights=WEIGHTS, svd_rank=8 if method == "svd" else None)
        result = combine_adapters(dirs, tmp_path / method, options)
        got = merge_in_memory(base_sd, result.path)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=2e-6, rtol=0)
        report = json.loads((result.path / "combine_report.json").read_text())
        assert report["max_relative_deviation"] < 1e-4 and report["weights"] == list(WEIGHTS)
    # loading through peft honours the per-module ranks and scaling 1 of the combined config
    peft_merged = load_adapter(load_model(tmp_path / "base"), tmp_path / "cat").merge_and_unload()
    fuse_split_modules(peft_merged)  # Apple's fused keys again
    peft_merged = peft_merged.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(peft_merged[key], value, atol=2e-6, rtol=0)
