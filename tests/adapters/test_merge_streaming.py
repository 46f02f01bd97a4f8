"""Low-memory merge and the safetensors writer: bit-identical to the in-memory merge, shards, one rounding."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from elmtune.adapters import AdapterConfig, apply_adapter, merge_state_dict, read_adapter
from elmtune.adapters.merge_run import MergeError, MergeOptions, merge_to_directory
from elmtune.adapters.streaming import merge_tensor
from elmtune.adapters.tensor_files import (
    SafetensorsSource,
    ShardedSafetensorsWriter,
    StateDictSource,
    TensorSpec,
    parse_size,
    plan_shards,
)
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
    assert memory.report["low_memory"] is False and low.report["low_memory"] is True
    # and both equal the pure state-dict merge of the adapters package, rounded to the same dtype
    base_model = load_model(base)
    base_sd = {k: base_model.state_dict()[k] for k in saved_keys(base_model)}
    expected = merge_state_dict({k: v.float() for k, v in base_sd.items()}, read_adapter(adapter))
    saved = load_file(low.path / "model.safetensors")
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    assert all(torch.equal(saved[k], v.to(target)) for k, v in expected.items())


def test_low_memory_merge_never_loads_the_whole_model(setup: tuple[Path, Path], tmp_path: Path, monkeypatch):
    import elmtune.models.loading

    def forbidden(*args, **kwargs):
        raise AssertionError("the low-memory merge loaded the whole base model")

    monkeypatch.setattr(elmtune.models.loading, "load_model", forbidden)
    monkeypatch.setattr(OpenELMForCausalLM, "from_pretrained", forbidden)
    base, adapter = setup
    options = MergeOptions(low_memory=True, probe_texts=("A short probe.", "Another one, a bit longer than that."))
    result = merge_to_directory(base, adapter, tmp_path / "merged", options)
    assert result.verification.passed and result.report["embeddings"]["tied"]


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

    from elmtune.adapters.merge import AdapterCheckpoint

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
    merged = merge_tensor(StateDictSource({key: weight}), checkpoint, key, torch.bfloat16)

    exact = weight.double() + 2.0 * lora_b @ lora_a  # s = 16 / 8, all in fp64
    if method == "dora":
        magnitude = layer.lora_magnitude_vector["default"].weight.double()
        exact = (magnitude / exact.norm(dim=1))[:, None] * exact
    reference = exact.to(torch.bfloat16)
    assert (merged != reference).float().mean() < 1e-3  # identical but for rare double-rounding ties
    twice = (weight.to(torch.bfloat16) + (exact - weight.double()).to(torch.bfloat16)).to(torch.bfloat16)
    assert (twice != reference).float().mean() > 0.05  # rounding base and update separately, as a bf16 merge does


def test_writer_output_reads_back_with_safetensors(tmp_path: Path):
    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16),
        "b": torch.randn(7),
        "c": torch.randn(2, 2, 2).half(),
    }
    specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    writer = ShardedSafetensorsWriter(tmp_path, specs, max_shard_size=10**9)
    for key, value in tensors.items():
        writer.write(key, value)
    assert writer.finish() == ["model.safetensors"]
    loaded = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())
    source = SafetensorsSource({k: tmp_path / "model.safetensors" for k in tensors})
    assert (
        source.shape("c") == (2, 2, 2)
        and source.dtype("a") == torch.bfloat16
        and torch.equal(source.get("b"), tensors["b"])
    )


def test_writer_refuses_a_tensor_out_of_plan(tmp_path: Path):
    from elmtune.adapters.tensor_files import CheckpointFilesError

    writer = ShardedSafetensorsWriter(tmp_path, [TensorSpec("a", (2,), torch.float32)], max_shard_size=100)
    with pytest.raises(CheckpointFilesError, match="expected a"):
        writer.write("a", torch.zeros(3))
    writer.close()


def test_plan_shards_and_sizes():
    specs = [TensorSpec(str(i), (n,), torch.float32) for i, n in enumerate([10, 10, 30, 5])]  # 40, 40, 120, 20 bytes
    assert [[s.key for s in shard] for shard in plan_shards(specs, 80)] == [["0", "1"], ["2"], ["3"]]
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("123") == 123
    with pytest.raises(ValueError, match="5GB"):
        parse_size("five gigs")
