"""Tensor sources: what merges and merge checks read from, one tensor at a time.

A tensor source knows the keys, shapes and dtypes of a checkpoint up front and hands out one tensor at a time:
:class:`StateDictSource` wraps an in-memory state dict (a loaded model), :class:`SafetensorsSource` (from
:mod:`elmtune.models.checkpoint_files`) reads safetensors files one tensor at a time, and :class:`OverlaySource`
replaces some tensors of another source. The merge does not know which one it reads, so the in-memory and the
low-memory merge are one implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from elmtune.models.checkpoint_files import SafetensorsSource


class TensorSource(Protocol):
    """Read access to a checkpoint, one tensor at a time.

    Attributes:
        hands_out_copies: Whether :meth:`get` returns a tensor nobody else holds (a merge may then write into it).
    """

    hands_out_copies: bool

    def keys(self) -> list[str]:
        """Every key, in storage order."""
        ...

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key``."""
        ...

    def dtype(self, key: str) -> torch.dtype:
        """The dtype of ``key``."""
        ...

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (CPU)."""
        ...


class StateDictSource:
    """A :class:`TensorSource` over an in-memory state dict (tensors are handed out as they are, never copied).

    Args:
        state_dict: Key -> tensor, in storage order.
    """

    hands_out_copies = False  # the model's own tensors

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(state_dict)

    def keys(self) -> list[str]:
        """Every key, in the state dict's order."""
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key``."""
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        """The dtype of ``key``."""
        return self._tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key``, detached, on the CPU."""
        return self._tensors[key].detach().cpu()


class OverlaySource:
    """A :class:`TensorSource` where some keys of a base source are replaced by other tensors (e.g. trained norms).

    Args:
        base: The source read for every key not in ``replacements``.
        replacements: Key -> tensor served instead of the base's.
    """

    hands_out_copies = False  # the replacements are the adapter's own tensors

    def __init__(self, base: TensorSource, replacements: Mapping[str, torch.Tensor]) -> None:
        self._base = base
        self._replacements = dict(replacements)

    def keys(self) -> list[str]:
        """The base source's keys."""
        return self._base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` (the replacement's when replaced)."""
        return tuple(self._replacements[key].shape) if key in self._replacements else self._base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        """The dtype of ``key`` (the replacement's when replaced)."""
        return self._replacements[key].dtype if key in self._replacements else self._base.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (the replacement when replaced)."""
        return self._replacements[key] if key in self._replacements else self._base.get(key)


__all__ = ["OverlaySource", "SafetensorsSource", "StateDictSource", "TensorSource"]
