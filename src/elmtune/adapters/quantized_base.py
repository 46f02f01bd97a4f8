"""Which base weights a quantised base (QLoRA) quantised, and how: the record saved with an adapter trained on it.

Merging such an adapter (:mod:`elmtune.merging.dequantized_source`) quantises and dequantises exactly these weights,
block by block, so the merged model is the model that was trained.
"""

from __future__ import annotations

from torch import nn

from elmtune.adapters.fused import RowSplitLinear


def quantized_weights(model: nn.Module) -> dict[str, list[tuple[int, int]]]:
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
    return {key: sorted(blocks) for key, blocks in sorted(weights.items())}


__all__ = ["quantized_weights"]
