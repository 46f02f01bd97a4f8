"""Low-memory merge: equal to peft's own merge, bit-identical to the in-memory merge, shards, one rounding."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file

from elmtune.adapters import AdapterConfig, apply_adapter, fuse_split_modules, load_adapter
from elmtune.merging import AdapterCheckpoint, StateDictSource, merge_tensor, parse_adapter
from elmtune.merging.options import MergeError, MergeOptions
from elmtune.merging.run import merge_to_directory
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model, saved_keys


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, trained_adapter) -> tuple[Path, Path]:
    """A bf16 base on disk (as hub checkpoints are) and a DoRA adapter on sub-projections and the embedding."""
    root = tmp_path_factory.mktemp("stream")
    torch.manual_seed(0)
    OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).to(torch.bfloat16).save_pretrained(root / "base")
    targets = ("q", "v", "up", "proj_2", "token_embeddings")
    adapter = trained_adapter(root / "base", root / "adapter", seed=3, method="dora", r=4, alpha=4, targets=targets)
    return root / "base", adapter


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_low_memory_merge_is_bit_identical_to_in_memory(setup: tuple[Path, Path], tmp_path: Path, dtype: str):
    base, adapter = setup
    memory = merge_to_directory(base, adapter, tmp_path / "memory", MergeOptions(dtype=dtype, verify=False))
    low = merge_to_directory(base, adapter, tmp_path / "low", MergeOptions(dtype=dtype, verify=False, low_memory=True))
    assert (memory.path / "model.safetensors").read_bytes() == (low.path / "model.safetensors").read_bytes()
    assert memory.report.low_memory is False and low.report.low_memory is True


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_merge_in_row_blocks_equals_peft_merge_and_unload(
    tmp_path: Path, trained_adapter, monkeypatch: pytest.MonkeyPatch, method: str
):
    """Blocks of a few rows (sub-projections, whole Linears, the embedding), written into the tensor read from disk."""
    from elmtune.merging import merge

    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).save_pretrained(base_dir)
    targets = ("q", "v", "proj_2", "token_embeddings")
    adapter = trained_adapter(base_dir, tmp_path / "adapter", seed=7, method=method, r=4, alpha=8, targets=targets)
    monkeypatch.setattr(merge, "CHUNK_BYTES", 6 * 4 * 128)  # six rows of a 128-wide fp32 weight
    calls = []
    real = merge.target_delta
    monkeypatch.setattr(merge, "target_delta", lambda *args: calls.append(1) or real(*args))
    options = MergeOptions(dtype="fp32", verify=False, low_memory=True)
    saved = load_file(merge_to_directory(base_dir, adapter, tmp_path / "merged", options).path / "model.safetensors")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_merged = load_adapter(load_model(base_dir), adapter).merge_and_unload()
    fuse_split_modules(peft_merged)
    expected = {k: peft_merged.state_dict()[k] for k in saved_keys(peft_merged)}
    assert set(saved) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value.float(), atol=1e-6, rtol=0, msg=key)
    layers = OpenELMConfig.from_preset("tiny").num_transformer_layers
    assert len(calls) > 10 * 3 * layers  # every target in many blocks, not one update per target


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("targets", [("out_proj", "proj_2"), ("q", "v", "gate")], ids=["whole", "sub-projections"])
def test_low_memory_merge_equals_peft_merge_and_unload(
    tmp_path: Path, trained_adapter, method: str, targets: tuple[str, ...]
):
    """The streamed merge against peft's own ``merge_and_unload`` of the same adapter, every weight in fp32."""
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    OpenELMForCausalLM(OpenELMConfig.from_preset("tiny")).save_pretrained(base_dir)
    adapter = trained_adapter(base_dir, tmp_path / "adapter", seed=5, method=method, r=4, alpha=8, targets=targets)
    options = MergeOptions(dtype="fp32", verify=False, low_memory=True)
    merged = merge_to_directory(base_dir, adapter, tmp_path / "merged", options)
    saved = load_file(merged.path / "model.safetensors")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if targets[0] == "q":  # sub-projections: peft merges each row block, which are then concatenated back
            peft_model = load_adapter(load_model(base_dir), adapter)
        else:
            peft_model = PeftModel.from_pretrained(load_model(base_dir), str(adapter))
        peft_merged = peft_model.merge_and_unload()
    fuse_split_modules(peft_merged)
    expected = {k: peft_merged.state_dict()[k] for k in saved_keys(peft_merged)}
    assert set(saved) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value.float(), atol=1e-6, rtol=0, msg=key)
    base = load_file(base_dir / "model.safetensors")
    assert sum(not torch.equal(saved[k], base[k]) for k in saved) >= len(targets)  # the adapter changed weights


def test_low_memory_merge_never_loads_the_whole_model(setup: tuple[Path, Path], tmp_path: Path, monkeypatch):
    import elmtune.models.loading

    def forbidden(*args, **kwargs):
        raise AssertionError("the low-memory merge loaded the whole base model")

    monkeypatch.setattr(elmtune.models.loading, "load_model", forbidden)
    monkeypatch.setattr(OpenELMForCausalLM, "from_pretrained", forbidden)
    base, adapter = setup
    options = MergeOptions(low_memory=True, probe_texts=("A short probe.", "Another one, a bit longer than that."))
    result = merge_to_directory(base, adapter, tmp_path / "merged", options)
    assert result.verification.passed and result.report.head.tied


def test_sharded_output_has_an_index_and_reloads(setup: tuple[Path, Path], tmp_path: Path):
    base, adapter = setup
    single = merge_to_directory(base, adapter, tmp_path / "single", MergeOptions(verify=False, low_memory=True))
    options = MergeOptions(verify=False, low_memory=True, max_shard_size="3MB")
    sharded = merge_to_directory(base, adapter, tmp_path / "sharded", options).path
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    for name in shards:
        with safe_open(str(sharded / name), framework="pt") as handle:
            keys = list(handle.keys())
            size = sum(handle.get_tensor(k).numel() * 2 for k in keys)
        assert size <= 3_000_000 or len(keys) == 1  # only a tensor larger than the limit gets a shard of its own
    reference = load_file(single.path / "model.safetensors")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in reference.values())
    model = load_model(sharded)
    reloaded = {k: model.state_dict()[k] for k in saved_keys(model)}
    assert set(reloaded) == set(reference) and all(torch.equal(reloaded[k], v) for k, v in reference.items())


def test_low_memory_needs_files(setup: tuple[Path, Path], tmp_path: Path):
    _, adapter = setup
    with pytest.raises(MergeError, match="preset .* no files"):
        merge_to_directory("tiny", adapter, tmp_path / "x", MergeOptions(low_memory=True))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_bf16_merge_rounds_once(method: str):
    """fp32 update on an fp32 base rounded once to bf16 equals the fp64 reference rounded; rounding twice does not."""
    from peft import get_peft_model_state_dict

    torch.manual_seed(1)
    model = OpenELMForCausalLM(OpenELMConfig.from_preset("tiny"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = apply_adapter(model, AdapterConfig(method=method, r=8, alpha=16, targets=("out_proj",)))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                param.add_(torch.randn_like(param) * 0.05)
    layer = peft_model.base_model.model.transformer.layers[2].attn.out_proj
    lora_a, lora_b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
    weight = layer.base_layer.weight.detach().clone()
    key = "transformer.layers.2.attn.out_proj.weight"
    checkpoint = AdapterCheckpoint(get_peft_model_state_dict(peft_model), {"r": 8, "lora_alpha": 16}, None)
    merged = merge_tensor(StateDictSource({key: weight}), parse_adapter(checkpoint), key, torch.bfloat16)

    exact = weight.double() + 2.0 * lora_b @ lora_a  # s = 16 / 8, all in fp64
    if method == "dora":
        magnitude = layer.lora_magnitude_vector["default"].weight.double()
        exact = (magnitude / exact.norm(dim=1))[:, None] * exact
    reference = exact.to(torch.bfloat16)
    assert (merged != reference).float().mean() < 1e-3  # identical but for rare double-rounding ties
    twice = (weight.to(torch.bfloat16) + (exact - weight.double()).to(torch.bfloat16)).to(torch.bfloat16)
    assert (twice != reference).float().mean() > 0.05  # rounding base and update separately, as a bf16 merge does
