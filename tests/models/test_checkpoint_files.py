"""Reading a safetensors checkpoint one tensor at a time: the bytes safetensors wrote, nothing mapped, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from elmtune.models.checkpoint_files import CheckpointFilesError, SafetensorsSource


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w.bf16": torch.randn(5, 3, generator=generator).to(torch.bfloat16),
        "w.f16": torch.randn(4, 2, 3, generator=generator).half(),
        "w.f32": torch.randn(7, generator=generator),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_every_tensor_reads_back_as_safetensors_wrote_it_across_shards(tmp_path: Path):
    tensors = _tensors()
    keys = list(tensors)
    save_file({k: tensors[k] for k in keys[:2]}, tmp_path / "one.safetensors", metadata={"format": "pt"})
    save_file({k: tensors[k] for k in keys[2:]}, tmp_path / "two.safetensors")
    files = {k: tmp_path / ("one.safetensors" if i < 2 else "two.safetensors") for i, k in enumerate(keys)}
    source = SafetensorsSource(files)
    for key, expected in tensors.items():
        got = source.get(key)
        assert got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected), key
        got.zero_()  # a private copy: the next read is unchanged
        assert torch.equal(source.get(key), expected)
    assert source.hands_out_copies


def test_a_file_cut_inside_a_tensor_is_named_on_one_line(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), path)
    source = SafetensorsSource.from_directory(tmp_path)  # headers read while the file is whole
    path.write_bytes(path.read_bytes()[:-8])  # the last tensor's data is cut
    with pytest.raises(CheckpointFilesError, match="model.safetensors is not a complete safetensors file") as info:
        for key in source.keys():
            source.get(key)
    assert "\n" not in str(info.value)
