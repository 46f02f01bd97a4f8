"""The streaming safetensors writer: reads back with safetensors, refuses tensors out of plan, plans shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmtune.merging.options import parse_size
from elmtune.merging.safetensors_writer import (
    CheckpointFilesError,
    ShardedSafetensorsWriter,
    TensorSpec,
    plan_shards,
)
from elmtune.merging.sources import SafetensorsSource


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
