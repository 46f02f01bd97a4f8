"""A streaming safetensors writer: merged checkpoints are written one tensor at a time, as they are produced.

:class:`ShardedSafetensorsWriter` writes tensors in a planned order straight to safetensors files. The safetensors
layout is an 8-byte little-endian header length, a JSON header (``dtype``, ``shape``, ``data_offsets`` per tensor,
padded with spaces to 8 bytes) and the raw little-endian bytes; since the plan gives every shape and dtype, the header
goes first and each tensor's bytes follow as the tensor is produced. Above ``max_shard_size`` the checkpoint is split
into ``model-0000i-of-0000n.safetensors`` with a ``model.safetensors.index.json`` (transformers' layout).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from elmtune.models.checkpoint_files import DTYPE_CODES, INDEX_FILE, SINGLE_FILE, CheckpointFilesError


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a planned checkpoint.

    Attributes:
        key: The tensor's name.
        shape: Its shape.
        dtype: Its dtype (float32, float16 or bfloat16).
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"{self.key}: dtype {self.dtype} cannot be written (use float32, float16 or bfloat16)")

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: Iterable[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Split tensors, in order, into shards of at most ``max_shard_size`` bytes (a larger tensor gets its own)."""
    if max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards if shards[0] else []


def _header(specs: list[TensorSpec], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for spec in specs:
        header[spec.key] = {
            "dtype": DTYPE_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class ShardedSafetensorsWriter:
    """Write planned tensors one at a time into (sharded) safetensors files.

    Args:
        out_dir: Existing directory to write into.
        specs: Every tensor, in the order :meth:`write` will receive them.
        max_shard_size: Bytes per shard file; one file (``model.safetensors``) when everything fits.
        metadata: safetensors ``__metadata__`` (``{"format": "pt"}`` by default, as transformers writes).
    """

    def __init__(
        self,
        out_dir: str | Path,
        specs: Iterable[TensorSpec],
        max_shard_size: int,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self._shards = plan_shards(specs, max_shard_size)
        self._metadata = dict(metadata or {"format": "pt"})
        count = len(self._shards)
        self.file_names = (
            [SINGLE_FILE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._queue = [(i, spec) for i, shard in enumerate(self._shards) for spec in shard]
        self._position = 0
        self._handle = None

    @property
    def specs(self) -> list[TensorSpec]:
        """Every planned tensor, in write order."""
        return [spec for _, spec in self._queue]

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor.

        Raises:
            CheckpointFilesError: ``key``, shape or dtype differ from the plan.
        """
        if self._position >= len(self._queue):
            raise CheckpointFilesError(f"{key}: every planned tensor has already been written")
        shard, spec = self._queue[self._position]
        if key != spec.key or tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise CheckpointFilesError(
                f"expected {spec.key} {list(spec.shape)} {spec.dtype}, got {key} {list(tensor.shape)} {tensor.dtype}"
            )
        if self._handle is None:
            self._handle = open(self.out_dir / self.file_names[shard], "wb")  # noqa: SIM115 - closed at shard end
            self._handle.write(_header(self._shards[shard], self._metadata))
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # raw little-endian bytes
        self._handle.write(memoryview(data.numpy()))
        self._position += 1
        if self._position == len(self._queue) or self._queue[self._position][0] != shard:
            self._handle.close()
            self._handle = None

    def finish(self) -> list[str]:
        """Check that everything was written and write the shard index (when sharded).

        Returns:
            The files written, index included.

        Raises:
            CheckpointFilesError: Planned tensors were not written.
        """
        if self._position != len(self._queue):
            raise CheckpointFilesError(f"{len(self._queue) - self._position} planned tensor(s) were not written")
        if len(self.file_names) == 1:
            return list(self.file_names)
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in self.specs)},
            "weight_map": {spec.key: self.file_names[i] for i, spec in self._queue},
        }
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return [*self.file_names, INDEX_FILE]

    def close(self) -> None:
        """Close an open shard file (after an error)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


__all__ = ["CheckpointFilesError", "ShardedSafetensorsWriter", "TensorSpec", "plan_shards"]
