"""What a run's memory plan counts: parameters and per-layer widths, from a model built on the ``meta`` device.

The model named by a run config (preset, local checkpoint or cached hub id) is built with shapes only, no weights,
and the run's adapter is applied to it exactly as training applies it (the same target resolution, rank strategy,
DoRA magnitudes and trainable norms), so the counts are those of the run, read off real modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from elmtune.models.describe import resolve_geometry

if TYPE_CHECKING:
    from elmtune.finetune.config import RunConfig
    from elmtune.models.geometry import ModelGeometry


@dataclass(frozen=True)
class AdaptedInput:
    """One adapted module's input as the memory plan sees it.

    Attributes:
        module: The module (or fused module, for sub-projections) whose input the adapter reads.
        in_features: The input width.
        targets: Adapted modules that read this input (q, k and v share the fused ``qkv_proj`` input).
        rank_sum: Sum of the ranks of those targets (the width of their A outputs).
        out_sum: Sum of their output widths (DoRA rescales every output).
    """

    module: str
    in_features: int
    targets: int
    rank_sum: int
    out_sum: int


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a run's model and adapter.

    Attributes:
        base: All parameters of the base model (a tied embedding counted once).
        quantizable: Parameters of the Linear layers a ``nf4``/``int8`` base quantises (all but embedding and head).
        quantizable_rows: Output rows of those Linear layers (``int8`` keeps one fp32 scale per row).
        trainable: Parameters that receive gradients (adapter, DoRA magnitudes, trainable norms).
        inputs: The adapted inputs of each decoder layer, by layer index.
        geometry: The model's geometry (widths, heads, vocabulary).
    """

    base: int
    quantizable: int
    quantizable_rows: int
    trainable: int
    inputs: dict[int, tuple[AdaptedInput, ...]]
    geometry: ModelGeometry


def _fused_name(name: str) -> str:
    """``...attn.qkv_proj.q`` -> ``...attn.qkv_proj``; whole modules keep their name."""
    parent, _, last = name.rpartition(".")
    return parent if last in ("q", "k", "v", "gate", "up") else name


def count_parameters(config: RunConfig) -> ParameterCounts:
    """Count the parameters of ``config``'s model with its adapter, on the ``meta`` device (no weights are read).

    Args:
        config: The run configuration (``model`` and ``adapter`` are used).

    Returns:
        The counts.

    Raises:
        ModelNotFoundError: The model name is neither a preset, a local directory nor a cached hub id.
        AdapterError: Targets that match nothing.
    """
    from torch import nn

    from elmtune.adapters import apply_adapter
    from elmtune.adapters.targets import layer_index
    from elmtune.models.describe import build_meta_model
    from elmtune.models.quantize import quantizable_linears

    geometry, _ = resolve_geometry(config.model)
    model = build_meta_model(config.model)
    base = sum(p.numel() for p in model.parameters())
    linears = [model.get_submodule(name) for name in quantizable_linears(model)]
    quantizable = sum(layer.weight.numel() for layer in linears if isinstance(layer, nn.Linear))
    rows = sum(layer.weight.shape[0] for layer in linears if isinstance(layer, nn.Linear))
    # the initialisation decides values, never shapes: count with peft's default (SVD inits need real weights)
    adapted = apply_adapter(model, dataclasses.replace(config.adapter, init="default"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    grouped: dict[str, list[tuple[int, int, int]]] = {}
    for name, module in adapted.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or not lora_a:
            continue
        weight = next(iter(lora_a.values())).weight  # (r, in)
        out_features = getattr(module, "out_features", weight.shape[1])
        grouped.setdefault(_fused_name(name), []).append((int(weight.shape[0]), int(weight.shape[1]), out_features))
    inputs: dict[int, list[AdaptedInput]] = {}
    for module, entries in grouped.items():
        index = layer_index(module)
        if index is None:
            continue  # the embedding's adapter reads token ids, not activations
        inputs.setdefault(index, []).append(
            AdaptedInput(
                module=module,
                in_features=entries[0][1],
                targets=len(entries),
                rank_sum=sum(r for r, _, _ in entries),
                out_sum=sum(out for _, _, out in entries),
            )
        )
    return ParameterCounts(
        base=base,
        quantizable=quantizable,
        quantizable_rows=rows,
        trainable=trainable,
        inputs={index: tuple(items) for index, items in inputs.items()},
        geometry=geometry,
    )


__all__ = ["AdaptedInput", "ParameterCounts", "count_parameters"]
