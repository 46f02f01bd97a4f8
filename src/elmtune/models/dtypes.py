"""The weight and compute dtypes elmtune accepts, by name: one map for model loading, merging and training."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Short dtype name -> torch dtype: the names of ``--precision``, ``--base-dtype`` and ``--dtype``."""

DTYPE_ALIASES: dict[str, str] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
"""Other accepted spellings (torch's names, ``half``) -> the short name in :data:`DTYPES`."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; ``None`` or ``"auto"`` -> ``None``.

    Names are case-insensitive.

    Args:
        dtype: A name from :data:`DTYPES` or :data:`DTYPE_ALIASES`, ``"auto"``, a torch dtype, or None.

    Returns:
        The torch dtype, or None for "keep the checkpoint's dtype".

    Raises:
        ValueError: For an unknown dtype name.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    name = dtype.lower()
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        known = ", ".join(sorted([*DTYPES, *DTYPE_ALIASES]))
        raise ValueError(f"unknown dtype {dtype!r}; use one of {known} or auto")
    return DTYPES[name]


__all__ = ["DTYPES", "DTYPE_ALIASES", "resolve_dtype"]
