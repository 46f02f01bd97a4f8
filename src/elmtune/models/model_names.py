"""Whether a model name can name a model at all, checked before any work and without importing torch.

A model name is a preset (``270M``, ``tiny``, ...), an existing local directory, or a hub id (``namespace/name``).
"""

from __future__ import annotations

import re
from pathlib import Path

from elmtune.errors import ModelNotFoundError
from elmtune.models.presets import PRESETS, preset_name

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}(/[A-Za-z0-9][\w.\-]{0,95})?")


def is_preset(name: str) -> bool:
    """Whether ``name`` is a bare preset name (``270M``, ``tiny``, ...) rather than a hub id or a path."""
    return "/" not in name and preset_name(name) is not None and not Path(name).exists()


def check_model_name(name: str) -> None:
    """Refuse a name that is neither a preset, an existing path, nor shaped like a hub id (``namespace/name``).

    Raises:
        ModelNotFoundError: One line saying which of the three the name could have been and is not.
    """
    if is_preset(name) or Path(name).expanduser().exists():
        return
    if not _HUB_ID.fullmatch(name) or ".." in name or "--" in name:
        raise ModelNotFoundError(
            f"model '{name}' does not exist: it is not a local directory, not a preset ({', '.join(PRESETS)}) and "
            "not a hub id (namespace/name); check the path"
        )


__all__ = ["check_model_name", "is_preset"]
