"""The base an adapter trained on a quantised base (QLoRA) was trained on: ``dequant(quant(W))`` for its Linears.

An adapter trained with ``train.base_dtype`` ``nf4`` or ``int8`` records which base weights were quantised, row
block by row block (``base_quantization`` in ``elmtune_adapter.json``). :class:`DequantizedSource` serves those
weights quantised and dequantised again, exactly as the training run's layers computed with them (in fp32), and every
other tensor as it is. Merging from it adds the fp32 update to these weights, so the merged model reproduces the
model that was trained; the merge check reads the same source for its unmerged side.
"""

from __future__ import annotations

import torch

from elmtune.adapters.config import AdapterError
from elmtune.adapters.quantized_base import QuantizedBaseRecord
from elmtune.merging.sources import TensorSource


class DequantizedSource:
    """A :class:`TensorSource` whose recorded Linear weights are ``dequant(quant(W))`` in fp32, block by block.

    Args:
        base: The full-precision base.
        record: The adapter's ``base_quantization``: the kind, the dtype quantised from, and the row blocks of every
            quantised weight.

    Raises:
        AdapterError: The record names a weight, or rows, that the base lacks.
    """

    def __init__(self, base: TensorSource, record: QuantizedBaseRecord) -> None:
        self._base = base
        self.hands_out_copies = base.hands_out_copies  # dequantised tensors are new; the others are the base's
        self.kind = record.quantization.kind
        self._from = record.quantization.compute_dtype
        self._blocks = dict(record.weights)
        available = set(base.keys())
        for key, blocks in self._blocks.items():
            rows = [row for block in blocks for row in range(*block)]
            if key not in available or rows != list(range(base.shape(key)[0])):
                raise AdapterError(f"the adapter's base was quantised at {key} (rows {blocks}), which this base lacks")

    @property
    def quantized_keys(self) -> list[str]:
        """The keys served dequantised."""
        return sorted(self._blocks)

    def keys(self) -> list[str]:
        """The base source's keys."""
        return self._base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key``."""
        return self._base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        """The base's dtype of ``key`` (the merged checkpoint's default dtype follows the base)."""
        return self._base.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key``: fp32 ``dequant(quant(W))`` per recorded row block when quantised, else the base's."""
        weight = self._base.get(key)
        if key not in self._blocks:
            return weight
        from elmtune.models.quantize import fake_quantize

        blocks = [
            fake_quantize(weight[start:stop], self.kind, self._from, name=f"{key}[{start}:{stop}]")
            for start, stop in self._blocks[key]
        ]
        return torch.cat(blocks, dim=0)  # (out, in) fp32


__all__ = ["DequantizedSource"]
