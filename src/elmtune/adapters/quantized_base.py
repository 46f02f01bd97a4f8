"""Which base weights a quantised base (QLoRA) quantised, and how: the record saved with an adapter trained on it.

Merging such an adapter (:mod:`elmtune.merging.dequantized_source`) quantises and dequantises exactly these weights,
block by block, so the merged model is the model that was trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from elmtune.adapters.config import AdapterError
from elmtune.adapters.fused import RowSplitLinear
from elmtune.models.dtypes import resolve_dtype
from elmtune.models.quantize import NF4_BLOCK_SIZE, QUANT_KINDS, BaseQuantization, base_quantization

RowBlocks = tuple[tuple[int, int], ...]
"""``(start, stop)`` row ranges of one weight, each quantised on its own."""


def quantized_weights(model: nn.Module) -> dict[str, RowBlocks]:
    """Base tensor key -> row blocks quantised one by one, for every bitsandbytes layer of a quantised base.

    A fused module split into row blocks was quantised block by block (``qkv_proj.weight`` -> its q, k, v rows);
    any other Linear as one block of all its rows. Keys are the base checkpoint's (no peft wrappers).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights: dict[str, list[tuple[int, int]]] = {}
    for name, module in base.named_modules():
        if not type(module).__module__.startswith("bitsandbytes"):
            continue
        clean = name.replace(".base_layer", "")
        parent_name, _, block = clean.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else None
        if isinstance(parent, RowSplitLinear):
            weights.setdefault(f"{parent_name}.weight", []).append(parent.row_ranges()[block])
        else:
            weights[f"{clean}.weight"] = [(0, int(module.out_features))]
    return {key: tuple(sorted(blocks)) for key, blocks in sorted(weights.items())}


@dataclass(frozen=True)
class QuantizedBaseRecord:
    """``base_quantization`` of ``elmtune_adapter.json``: how the base was quantised, and which weights.

    Attributes:
        quantization: The kind (``nf4``/``int8``) and the dtype the weights were quantised from (the compute dtype).
        weights: Base tensor key -> the row blocks quantised one by one.
    """

    quantization: BaseQuantization
    weights: Mapping[str, RowBlocks]

    @classmethod
    def of_model(cls, model: nn.Module) -> QuantizedBaseRecord | None:
        """The record of a model whose base :func:`~elmtune.models.quantize.quantize_linears` quantised (else None)."""
        quantization = base_quantization(model)
        return None if quantization is None else cls(quantization, quantized_weights(model))

    def to_dict(self) -> dict[str, object]:
        """The JSON-ready record."""
        kind = self.quantization.kind
        return {
            "kind": kind,
            "compute_dtype": str(self.quantization.compute_dtype).removeprefix("torch."),
            "block_size": NF4_BLOCK_SIZE if kind == "nf4" else None,
            "double_quant": kind == "nf4",
            "weights": {key: [list(rows) for rows in blocks] for key, blocks in self.weights.items()},
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], source: str = "the adapter") -> QuantizedBaseRecord:
        """Parse the record that :meth:`to_dict` wrote.

        Raises:
            AdapterError: An unknown kind or dtype, or malformed row blocks (naming ``source``).
        """
        kind = record.get("kind")
        if kind not in QUANT_KINDS:
            raise AdapterError(f"{source}: base_quantization kind {kind!r} is not one of {', '.join(QUANT_KINDS)}")
        try:
            dtype = resolve_dtype(str(record.get("compute_dtype", "float32"))) or torch.float32
            weights = {
                str(key): tuple((int(start), int(stop)) for start, stop in blocks)
                for key, blocks in dict(record["weights"]).items()
            }
        except (KeyError, TypeError, ValueError) as error:
            raise AdapterError(f"{source}: base_quantization is malformed ({error})") from None
        return cls(BaseQuantization(kind, dtype), weights)


__all__ = ["QuantizedBaseRecord", "RowBlocks", "quantized_weights"]
