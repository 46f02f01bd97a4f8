"""The files of an adapter directory, and reading them without torch or peft.

An adapter directory holds ``adapter_config.json`` (peft's ``LoraConfig``) and ``adapter_model.safetensors`` (peft's
keys), so plain ``peft.PeftModel.from_pretrained`` reads it, and ``elmtune_adapter.json`` with what elmtune adds (the
base model, row blocks of sub-projections, a quantised base). Saving and loading adapters on a model is
:mod:`elmtune.adapters.io`; this module is what readers that never build a model (a merge, a checkpoint check) need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elmtune.adapters.config import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_FILE = "elmtune_adapter.json"
METADATA_FORMAT = "elmtune-adapter"
METADATA_VERSION = 1
PEFT_KEY_PREFIX = "base_model.model."
"""The prefix peft gives every key of a saved adapter's tensors."""


def read_metadata(adapter_dir: str | Path) -> dict[str, Any] | None:
    """Read the elmtune metadata of an adapter directory.

    Returns:
        The metadata, or None for an adapter saved by plain peft.

    Raises:
        AdapterError: The file is not elmtune adapter metadata, or was written by a newer format version.
    """
    path = Path(adapter_dir) / METADATA_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != METADATA_FORMAT:
        raise AdapterError(f"{path} is not an elmtune adapter metadata file")
    if int(data.get("version", 0)) > METADATA_VERSION:
        raise AdapterError(f"{path} was written by a newer elmtune (format {data['version']}); upgrade elmtune")
    return data


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """Validate that a directory holds a PEFT adapter in safetensors format.

    Raises:
        AdapterError: Missing directory or files, or only a pickle (``.bin``) checkpoint.
    """
    path = Path(adapter_dir)
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{path} has no {CONFIG_FILE}; is it an adapter directory?")
    if not (path / WEIGHTS_FILE).is_file():
        if (path / "adapter_model.bin").is_file():
            raise AdapterError(f"{path} holds a pickle checkpoint (adapter_model.bin); only safetensors are loaded")
        raise AdapterError(f"{path} has no {WEIGHTS_FILE}")
    return path


__all__ = [
    "CONFIG_FILE",
    "METADATA_FILE",
    "METADATA_FORMAT",
    "METADATA_VERSION",
    "PEFT_KEY_PREFIX",
    "WEIGHTS_FILE",
    "check_adapter_dir",
    "read_metadata",
]
