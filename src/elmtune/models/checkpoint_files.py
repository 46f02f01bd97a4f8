"""Read a safetensors checkpoint directory one tensor at a time (single file or shards with an index).

Merges and GGUF export both stream a checkpoint: they need every key's shape and dtype up front, from the safetensors
headers alone, then one tensor at a time, without a memory map of the whole checkpoint staying resident.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from elmtune.errors import ElmtuneError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPE_CODES: dict[torch.dtype, str] = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
"""torch dtype -> safetensors dtype code (the dtypes a checkpoint may hold)."""
_CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


class CheckpointFilesError(ElmtuneError):
    """A checkpoint directory without usable safetensors files, or a write that does not follow its plan."""


@contextlib.contextmanager
def open_safetensors(path: str | Path) -> Iterator[Any]:
    """``safetensors.safe_open`` of one file (torch tensors), whose header errors name the file on one line.

    Raises:
        CheckpointFilesError: The file is truncated or corrupt.
    """
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise _corrupt(path, err) from None
    with handle:
        yield handle


def _corrupt(path: str | Path, err: BaseException) -> CheckpointFilesError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointFilesError(
        f"{path} is not a complete safetensors file ({reason}); it is truncated or corrupt: save or copy it again"
    )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file.

    Raises:
        CheckpointFilesError: The file is missing, truncated or corrupt (one line naming it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise _corrupt(path, err) from None


def data_offsets(path: str | Path) -> dict[str, tuple[int, int]]:
    """Key -> ``(start, stop)`` byte offsets of its data in the file, from the safetensors header.

    The layout: an 8-byte little-endian header length, the JSON header (``data_offsets`` relative to its end), data.

    Raises:
        CheckpointFilesError: The header cannot be read.
    """
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        return {
            key: (8 + length + entry["data_offsets"][0], 8 + length + entry["data_offsets"][1])
            for key, entry in header.items()
            if key != "__metadata__"
        }
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError) as err:
        raise _corrupt(path, err) from None


def checkpoint_files(model_dir: str | Path) -> dict[str, Path]:
    """Key -> the safetensors file that holds it, from the shard index or the single ``model.safetensors``.

    Raises:
        CheckpointFilesError: No safetensors checkpoint, or an index naming a missing shard.
    """
    path = Path(model_dir)
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointFilesError(f"{index} has no weight_map")
        files = {key: path / name for key, name in weight_map.items()}
        missing = sorted({f.name for f in files.values() if not f.is_file()})
        if missing:
            raise CheckpointFilesError(f"{path} is incomplete: shard(s) {', '.join(missing)} are missing")
        return files
    single = path / SINGLE_FILE
    if single.is_file():
        with open_safetensors(single) as handle:
            return dict.fromkeys(handle.keys(), single)
    hint = " (pickle checkpoints are not read; re-save with safetensors)" if any(path.glob("*.bin")) else ""
    raise CheckpointFilesError(f"'{path}' has no {SINGLE_FILE} or {INDEX_FILE}{hint}")


class SafetensorsSource:
    """Keys, shapes and dtypes of a checkpoint's safetensors files, read from the headers alone.

    :meth:`get` reads one tensor's bytes into new memory and closes the file: no memory map of the checkpoint is
    made, so a streaming reader's resident memory is the tensor it holds.

    Args:
        files: Key -> file (see :func:`checkpoint_files`).

    Raises:
        CheckpointFilesError: A file lacks a key the index gives it, or a tensor is not F32, F16 or BF16.
    """

    hands_out_copies = True  # every get copies out of the file

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = dict(files)
        self._spans: dict[str, tuple[int, int]] = {}  # key -> (start, stop) bytes of its data in its file
        self._info: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        by_file: dict[Path, list[str]] = {}
        for key, file in self._files.items():
            by_file.setdefault(file, []).append(key)
        for file, keys in by_file.items():
            spans = data_offsets(file)
            with open_safetensors(file) as handle:
                present = set(handle.keys())
                for key in keys:
                    if key not in present:
                        raise CheckpointFilesError(f"{file.name} does not hold {key}, which the index says it does")
                    view = handle.get_slice(key)
                    code = view.get_dtype()
                    if code not in _CODE_DTYPES:
                        raise CheckpointFilesError(f"{key} is {code}; only F32, F16 and BF16 checkpoints are read")
                    self._info[key] = (tuple(view.get_shape()), _CODE_DTYPES[code])
                    self._spans[key] = spans[key]

    @classmethod
    def from_directory(cls, model_dir: str | Path) -> SafetensorsSource:
        """The safetensors checkpoint in ``model_dir`` (single file or shards)."""
        return cls(checkpoint_files(model_dir))

    def keys(self) -> list[str]:
        """Every tensor key, in index (or file) order."""
        return list(self._info)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of tensor ``key``, from its header."""
        return self._info[key][0]

    def dtype(self, key: str) -> torch.dtype:
        """Torch dtype of tensor ``key``, from its header."""
        return self._info[key][1]

    def file(self, key: str) -> Path:
        """The safetensors file that holds ``key``."""
        return self._files[key]

    def get(self, key: str) -> torch.Tensor:
        """Tensor ``key`` in its stored dtype, read from the file into new memory (no memory map: only the tensor).

        Raises:
            CheckpointFilesError: The file ends before the tensor's data does.
        """
        file = self._files[key]
        start, stop = self._spans[key]
        shape, dtype = self._info[key]
        tensor = torch.empty(shape, dtype=dtype)
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())  # the tensor's bytes (little-endian)
        if stop - start != len(data):
            raise _corrupt(file, ValueError(f"{key} holds {stop - start} bytes, its shape needs {len(data)}"))
        with open(file, "rb") as handle:
            handle.seek(start)
            done = 0
            while done < len(data):
                count = handle.readinto(data[done:])
                if not count:
                    raise _corrupt(file, EOFError(f"the file ends inside {key}"))
                done += count
        return tensor


__all__ = [
    "DTYPE_CODES",
    "INDEX_FILE",
    "SINGLE_FILE",
    "CheckpointFilesError",
    "SafetensorsSource",
    "checkpoint_files",
    "data_offsets",
    "open_safetensors",
    "read_safetensors",
]
