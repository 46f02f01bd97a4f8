"""Merging adapters into base weights: a pure state-dict function (Apple's fused key layout) and an in-model twin.

:func:`merge_state_dict` needs no model code: it takes the base state dict (Apple's keys: ``...qkv_proj.weight``
with rows Q | K | V, ``...proj_1.weight`` with rows gate | up) and a saved adapter, computes every update in fp32,
and rounds each merged weight once to the base dtype. Sub-projection adapters (``qkv_proj.q``...) land on their rows
of the fused weight; every other row is returned bit-identical.

Math, per adapted module with ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA):

* LoRA Linear: ``W' = W + s·B·A``; LoRA Embedding: ``W' = W + s·(B·A)ᵀ``.
* DoRA Linear: ``W' = m / ||W + s·B·A||_row * (W + s·B·A)`` (magnitude per output row).

With a tied output head (OpenELM), merging an embedding adapter also changes the head, whereas the unmerged model's
head stays the base embedding; ``include_embedding=False`` leaves the embedding out of the merge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft.utils.other import get_pattern_key
from torch import nn

from elmtune.adapters.config import AdapterError
from elmtune.adapters.io import CONFIG_FILE, WEIGHTS_FILE, check_adapter_dir, read_metadata

_PREFIX = "base_model.model."
_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_embedding_A": "emb_A",
    ".lora_embedding_B": "emb_B",
    ".lora_magnitude_vector": "m",
}


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A saved adapter as plain data: peft tensors, peft config and elmtune metadata (None for plain peft)."""

    tensors: Mapping[str, torch.Tensor]
    peft_config: Mapping[str, Any]
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WeightDelta:
    """The fp32 update of one base tensor (or of a row block of it).

    Attributes:
        key: Base state-dict key (Apple's layout), e.g. ``transformer.layers.0.attn.qkv_proj.weight``.
        rows: ``(start, stop)`` rows of ``key`` the delta covers, or None for the whole tensor.
        delta: fp32 tensor in the base tensor's layout (``rows x in`` for a row block).
        module: The adapted module's name in the adapter (``...qkv_proj.q`` for a sub-projection).
    """

    key: str
    rows: tuple[int, int] | None
    delta: torch.Tensor
    module: str


def read_adapter(adapter_dir: str | Path) -> AdapterCheckpoint:
    """Read an adapter directory (safetensors only) into an :class:`AdapterCheckpoint`.

    Raises:
        AdapterError: Missing files or a pickle checkpoint.
    """
    from elmtune.models.checkpoint_files import read_safetensors

    path = check_adapter_dir(adapter_dir)
    return AdapterCheckpoint(
        tensors=read_safetensors(path / WEIGHTS_FILE),
        peft_config=json.loads((path / CONFIG_FILE).read_text()),
        metadata=read_metadata(path),
    )


def _group_modules(checkpoint: AdapterCheckpoint) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """peft keys -> {module: {"A"|"B"|"emb_A"|"emb_B"|"m": tensor}} and full-tensor replacements (trained norms)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    replaced: dict[str, torch.Tensor] = {}
    for key, tensor in checkpoint.tensors.items():
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        for suffix, part in _SUFFIXES.items():
            if name.endswith(suffix):
                modules.setdefault(name[: -len(suffix)], {})[part] = tensor
                break
        else:
            if "lora_" in name:
                raise AdapterError(f"cannot merge adapter tensor {key}: unsupported (e.g. lora_bias)")
            replaced[name] = tensor
    return modules, replaced


def _scaling(config: Mapping[str, Any], module: str, rank: int) -> float:
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _locate(module: str, metadata: Mapping[str, Any] | None) -> tuple[str, tuple[int, int] | None]:
    """Adapter module name -> (base key, rows) in Apple's fused layout."""
    row_blocks = (metadata or {}).get("row_blocks", {})
    parent, _, block = module.rpartition(".")
    if parent in row_blocks and block in row_blocks[parent]:
        start, stop = row_blocks[parent][block]
        return f"{parent}.weight", (int(start), int(stop))
    return f"{module}.weight", None


@torch.no_grad()
def adapter_deltas(
    base_state_dict: Mapping[str, torch.Tensor],
    checkpoint: AdapterCheckpoint,
    *,
    include_embedding: bool = True,
    keys: Collection[str] | None = None,
) -> list[WeightDelta]:
    """fp32 updates of every adapted base tensor, in Apple's key layout.

    Args:
        base_state_dict: The base model's state dict (Apple's keys; any dtype; read-only).
        checkpoint: The adapter (:func:`read_adapter`).
        include_embedding: Include embedding adapters (with a tied head they also change the output head).
        keys: Only the updates of these base keys (None: all); a streaming merge asks for one key at a time.

    Returns:
        One :class:`WeightDelta` per adapted module (several per fused key for sub-projections).

    Raises:
        AdapterError: An adapted module whose base tensor is missing or has another shape.
    """
    config = checkpoint.peft_config
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    as_lora = set((checkpoint.metadata or {}).get("dora_embedding_as_lora", []))
    modules, _ = _group_modules(checkpoint)
    deltas = []
    for module, parts in modules.items():
        key, rows = _locate(module, checkpoint.metadata)
        if keys is not None and key not in keys:
            continue
        if key not in base_state_dict:
            raise AdapterError(f"adapter module {module} has no base tensor {key}")
        base = base_state_dict[key]
        base = base[rows[0] : rows[1]] if rows is not None else base
        if "emb_A" in parts:
            if not include_embedding:
                continue
            a, b = parts["emb_A"].float(), parts["emb_B"].float()  # (r, vocab), (d, r)
            scale = _scaling(config, module, a.shape[0])
            merged = base.float() + scale * (b @ a).T  # (vocab, d)
            if "m" in parts and module not in as_lora:
                # peft's DoRA embedding: magnitude per embedding dimension (column)
                merged = merged * (parts["m"].float() / merged.norm(dim=0))[None, :]
            delta = merged - base.float()
        else:
            a, b = parts["A"].float(), parts["B"].float()  # (r, in), (out, r)
            scale = _scaling(config, module, a.shape[0])
            weight = base.float().T if fan_in_fan_out else base.float()  # (out, in)
            update = weight + scale * (b @ a)  # (out, in)
            if "m" in parts:
                update = (parts["m"].float() / update.norm(dim=1))[:, None] * update
            delta = update - weight
            delta = delta.T if fan_in_fan_out else delta
        if delta.shape != base.shape:
            raise AdapterError(f"adapter module {module}: update {tuple(delta.shape)} vs base {tuple(base.shape)}")
        deltas.append(WeightDelta(key=key, rows=rows, delta=delta.contiguous(), module=module))
    return deltas


@torch.no_grad()
def merge_state_dict(
    base_state_dict: Mapping[str, torch.Tensor], checkpoint: AdapterCheckpoint, *, include_embedding: bool = True
) -> dict[str, torch.Tensor]:
    """Merge an adapter into a base state dict: same keys, shapes and dtypes as the base.

    Each changed tensor is computed as ``round_to_base_dtype(fp32(base) + fp32 delta)`` once; rows of a fused weight
    that no sub-projection adapts, and all unadapted tensors, are returned unchanged (the base tensors themselves).
    Trained norms (``train_norms``) replace the base norms.

    Args:
        base_state_dict: The base model's state dict (Apple's keys).
        checkpoint: The adapter (:func:`read_adapter`).
        include_embedding: Merge embedding adapters too (see the module docstring on tied heads).

    Returns:
        The merged state dict.
    """
    merged = dict(base_state_dict)
    for d in adapter_deltas(base_state_dict, checkpoint, include_embedding=include_embedding):
        base = base_state_dict[d.key]
        if merged[d.key] is base:
            merged[d.key] = base.clone()
        target = merged[d.key]
        if d.rows is None:
            target.copy_((base.float() + d.delta).to(base.dtype))
        else:
            start, stop = d.rows
            target[start:stop] = (base[start:stop].float() + d.delta).to(base.dtype)
    _, replaced = _group_modules(checkpoint)
    for key, tensor in replaced.items():
        if key not in base_state_dict:
            raise AdapterError(f"adapter tensor {key} has no counterpart in the base model")
        merged[key] = tensor.to(base_state_dict[key].dtype)
    return merged


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter into the weights of a peft model and return the plain base model.

    Split fused modules are fused back, so the result has exactly the base state-dict keys (Apple's layout).
    """
    from elmtune.adapters.fused import fuse_split_modules

    base = model.merge_and_unload()
    fuse_split_modules(base)
    return base


__all__ = [
    "AdapterCheckpoint",
    "WeightDelta",
    "adapter_deltas",
    "merge_and_unload",
    "merge_state_dict",
    "read_adapter",
]
