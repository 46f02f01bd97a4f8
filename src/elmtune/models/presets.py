"""Named OpenELM shapes that build without any download.

The four published sizes carry the values of Apple's ``OpenELM_CONFIGS``; ``tiny`` keeps the same layer-wise
scaling (heads and FFN width grow with depth, grouped-query attention, q/k norms, tied embedding) at a few million
parameters, for tests and the offline quickstart. Plain Python: no torch import.
"""

from __future__ import annotations

import re
from typing import Any

_OPENELM_COMMON: dict[str, Any] = {
    "num_gqa_groups": 4,
    "qkv_multipliers": [0.5, 1.0],
    "ffn_multipliers": [0.5, 4.0],
    "normalize_qk_projections": True,
    "share_input_output_layers": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "270M": {"num_transformer_layers": 16, "model_dim": 1280, "head_dim": 64, **_OPENELM_COMMON},
    "450M": {"num_transformer_layers": 20, "model_dim": 1536, "head_dim": 64, **_OPENELM_COMMON},
    "1_1B": {"num_transformer_layers": 28, "model_dim": 2048, "head_dim": 64, **_OPENELM_COMMON},
    "3B": {"num_transformer_layers": 36, "model_dim": 3072, "head_dim": 128, **_OPENELM_COMMON},
    "tiny": {
        "num_transformer_layers": 4,
        "model_dim": 128,
        "head_dim": 16,
        "num_gqa_groups": 2,
        "qkv_multipliers": [0.5, 1.0],
        "ffn_multipliers": [0.5, 4.0],
        "ffn_dim_divisor": 32,
        "normalize_qk_projections": True,
        "share_input_output_layers": True,
    },
}
"""Preset name -> OpenELM config fields that differ from the class defaults."""

_HUB_ID = re.compile(r"^apple/OpenELM-(270M|450M|1_1B|3B)(-Instruct)?$", re.IGNORECASE)
_ALIASES = {"1.1b": "1_1B", "1_1b": "1_1B", "270m": "270M", "450m": "450M", "3b": "3B", "tiny": "tiny"}


def preset_name(name: str) -> str | None:
    """Canonical preset name for a preset name or an ``apple/OpenELM-<size>[-Instruct]`` hub id, else None.

    Examples:
        >>> preset_name("apple/OpenELM-270M-Instruct")
        '270M'
        >>> preset_name("1.1B")
        '1_1B'
    """
    match = _HUB_ID.match(name.strip())
    if match:
        return _ALIASES[match.group(1).lower()]
    return _ALIASES.get(name.strip().lower())


def hub_id(preset: str, instruct: bool = False) -> str | None:
    """The Apple hub id of a published preset (None for ``tiny``)."""
    if preset == "tiny":
        return None
    return f"apple/OpenELM-{preset}" + ("-Instruct" if instruct else "")
