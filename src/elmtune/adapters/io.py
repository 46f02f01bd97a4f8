"""Save and load adapters in standard PEFT format, plus elmtune's self-describing metadata.

An adapter directory holds ``adapter_config.json`` (peft's ``LoraConfig``) and ``adapter_model.safetensors``
(peft's keys), so plain ``peft.PeftModel.from_pretrained`` reads it, and ``elmtune_adapter.json`` with the base model
id/preset, the base geometry fingerprint, the elmtune adapter config and the row blocks of split fused modules. The
elmtune loader refuses an adapter whose base geometry differs, naming the first mismatching layer.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn

from elmtune import __version__
from elmtune.adapters.adapter_dir import (
    METADATA_FILE,
    METADATA_FORMAT,
    METADATA_VERSION,
    PEFT_KEY_PREFIX,
    WEIGHTS_FILE,
    check_adapter_dir,
    read_metadata,
)
from elmtune.adapters.apply import AdapterState, adapter_state, lora_layer_mapping, reject_wrapped, wrap_with_peft
from elmtune.adapters.base_signature import base_model_of, base_signature, check_signature
from elmtune.adapters.config import AdapterConfig, AdapterError
from elmtune.adapters.fused import RowSplitLinear, split_fused_modules
from elmtune.adapters.quantized_base import QuantizedBaseRecord
from elmtune.models.quantize import BaseQuantization, base_quantization, quantize_linears

_COMPAT_SUFFIX = ".lora_magnitude_vector"


def row_blocks_of(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """Full name of every split fused module -> block -> [start, stop] rows (JSON-ready)."""
    base = base_model_of(model)
    return {
        name: {block: [start, stop] for block, (start, stop) in module.row_ranges().items()}
        for name, module in base.named_modules()
        if isinstance(module, RowSplitLinear)
    }


def _convert_rewritten_init(
    tensors: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], config: LoraConfig
) -> None:
    """PiSSA/OLoRA -> plain LoRA on the original base: ``s(BA - B0A0) = s [B, -B0] [A; A0]`` (rank doubles)."""
    for key in list(tensors):
        if key.endswith("lora_A.weight") or key.endswith("lora_embedding_A"):
            tensors[key] = torch.cat([tensors[key], initial[key].to(tensors[key])], dim=0)
        elif key.endswith("lora_B.weight") or key.endswith("lora_embedding_B"):
            tensors[key] = torch.cat([tensors[key], -initial[key].to(tensors[key])], dim=1)
    factor = 2**0.5 if config.use_rslora else 2.0
    config.r *= 2
    config.lora_alpha *= factor
    config.rank_pattern = {k: 2 * v for k, v in config.rank_pattern.items()}
    config.alpha_pattern = {k: factor * v for k, v in config.alpha_pattern.items()}
    config.init_lora_weights = True


def _embedding_compat_magnitudes(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    """For DoRA adapters with a LoRA embedding: the magnitude plain peft's DoRA embedding needs to act as LoRA.

    peft would build a DoRA embedding for such an adapter; with ``m = ||W + sBA||`` (computed by peft's own code) its
    scale ``m / ||W + sBA||`` is 1, so plain peft reproduces elmtune's LoRA embedding.
    """
    from peft.tuners.lora.dora import DoraEmbeddingLayer

    out = {}
    for name, module in base_model_of(model).named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_embedding_A and adapter not in module.lora_variant:
            layer = DoraEmbeddingLayer(fan_in_fan_out=True)
            with torch.no_grad():
                layer.update_layer(
                    base_layer=module.get_base_layer(),
                    lora_A=module.lora_embedding_A[adapter],
                    lora_B=module.lora_embedding_B[adapter],
                    scaling=module.scaling[adapter],
                )
            out[f"{PEFT_KEY_PREFIX}{name}{_COMPAT_SUFFIX}"] = layer.weight.detach().float()
    return out


def save_adapter(model: PeftModel, out_dir: str | Path, *, base_name: str | None = None) -> Path:
    """Write the adapter of ``model`` to ``out_dir`` in PEFT format, with elmtune metadata.

    Args:
        model: A model from :func:`apply_adapter` or :func:`load_adapter` (a plain ``PeftModel`` works too).
        out_dir: Directory to create or overwrite files in.
        base_name: Base model id or preset recorded in the metadata and as peft's ``base_model_name_or_path``
            (default: the model's ``name_or_path``).

    Returns:
        The output directory.

    Raises:
        AdapterError: If ``model`` has no LoRA adapter.
    """
    if not isinstance(model, PeftModel):
        raise AdapterError("save_adapter needs the PeftModel returned by apply_adapter or load_adapter")
    state = adapter_state(model) or AdapterState(config=None, adapter_name=model.active_adapter)
    adapter = state.adapter_name
    config = copy.deepcopy(model.peft_config[adapter])
    if not isinstance(config, LoraConfig):
        raise AdapterError(f"adapter '{adapter}' is a {type(config).__name__}, not LoRA/DoRA")
    base = base_model_of(model)
    base_name = base_name or getattr(base, "name_or_path", None) or None
    tensors = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if state.initial:
        _convert_rewritten_init(tensors, state.initial, config)
    compat = _embedding_compat_magnitudes(model, adapter) if config.use_dora else {}
    tensors.update(compat)
    config.inference_mode = True
    config.base_model_name_or_path = base_name

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    metadata = {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "elmtune_version": __version__,
        "base_model": base_name,
        "base": base_signature(base),
        "adapter_config": state.config.to_dict() if state.config is not None else None,
        "row_blocks": row_blocks_of(base),
        "converted_init": state.config.init if state.initial and state.config is not None else None,
        "dora_embedding_as_lora": sorted(k[len(PEFT_KEY_PREFIX) : -len(_COMPAT_SUFFIX)] for k in compat),
    }
    record = QuantizedBaseRecord.of_model(base)
    if record is not None:
        metadata["base_quantization"] = record.to_dict()
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def attach_adapter_from_dir(
    base_model: nn.Module,
    adapter_dir: str | Path,
    *,
    adapter_name: str = "default",
    quantization: BaseQuantization | None = None,
) -> tuple[PeftModel, dict[str, Any] | None]:
    """Check the fingerprint, split fused modules and wrap ``base_model`` with the saved adapter's structure.

    The adapter weights are left at their initial values (this is what ``inspect`` needs on a meta-device model).
    With ``quantization``, the base's Linear layers are quantised after the split, before the adapter goes on.
    """
    path = check_adapter_dir(adapter_dir)
    reject_wrapped(base_model, "load onto the base model")
    metadata = read_metadata(path)
    if metadata is not None:
        check_signature(base_model, metadata.get("base", {}), str(path))
        blocks = {k: {b: (int(r[0]), int(r[1])) for b, r in v.items()} for k, v in metadata["row_blocks"].items()}
        split_fused_modules(base_model, blocks)
    if quantization is not None:
        quantize_linears(base_model, quantization)
    config = LoraConfig.from_pretrained(str(path))
    config.init_lora_weights = True  # never re-run data/SVD-based initialisations (they would rewrite the base)
    config.inference_mode = False
    config.base_model_name_or_path = getattr(base_model, "name_or_path", None) or None
    config._register_custom_module(lora_layer_mapping(base_quantization(base_model) is not None))
    model = wrap_with_peft(base_model, config, adapter_name)
    adapter_config = None
    if metadata is not None and metadata.get("adapter_config") is not None:
        adapter_config = AdapterConfig.from_dict(metadata["adapter_config"])
    model.__dict__["elmtune_adapter"] = AdapterState(config=adapter_config, adapter_name=adapter_name)
    return model, metadata


def _set_saved_tensors(
    model: PeftModel, adapter_dir: str | Path, metadata: dict[str, Any] | None, adapter_name: str
) -> None:
    """Copy the tensors saved in ``adapter_dir`` into adapter ``adapter_name`` of ``model``; every one must fit.

    Raises:
        AdapterError: A tensor of another shape, one the model lacks, or an adapter parameter left without a value.
    """
    from elmtune.models.checkpoint_files import read_safetensors

    tensors = read_safetensors(Path(adapter_dir) / WEIGHTS_FILE)
    for name in (metadata or {}).get("dora_embedding_as_lora", []):
        tensors.pop(f"{PEFT_KEY_PREFIX}{name}{_COMPAT_SUFFIX}", None)
    try:
        result = set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
    except RuntimeError as err:
        raise AdapterError(f"adapter {adapter_dir} does not fit this model: {str(err).splitlines()[0]}") from None
    if result.unexpected_keys:
        raise AdapterError(f"adapter {adapter_dir} has weights this model lacks: {result.unexpected_keys[0]}")
    expected = {
        n
        for n, _ in model.named_parameters()
        if ("lora_" in n and f".{adapter_name}" in n) or f".modules_to_save.{adapter_name}." in n
    }
    missing = sorted(expected & set(result.missing_keys))
    if missing:
        raise AdapterError(f"adapter {adapter_dir} lacks weights for {missing[0]}")


def load_frozen_copy(model: PeftModel, adapter_dir: str | Path, adapter_name: str) -> None:
    """Add the adapter saved in ``adapter_dir`` to ``model`` a second time, frozen, as adapter ``adapter_name``.

    ``model`` must hold that same adapter already (from :func:`load_adapter`): the copy takes its peft config. The
    active adapter and every other parameter's ``requires_grad`` are left as they were. A preference run that
    continues from an SFT adapter uses the copy as its reference (one extra adapter, not a second base model).

    Raises:
        AdapterError: The saved tensors do not fit the model's adapter.
    """
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.inference_mode = True
    config._register_custom_module(lora_layer_mapping(base_quantization(model) is not None))
    flags = [(param, param.requires_grad) for param in model.parameters()]
    model.add_adapter(adapter_name, config)
    _set_saved_tensors(model, adapter_dir, read_metadata(adapter_dir), adapter_name)
    for param, flag in flags:
        param.requires_grad_(flag)
    for name, param in model.named_parameters():
        if f".{adapter_name}." in name or name.endswith(f".{adapter_name}"):
            param.requires_grad_(False)


def load_adapter(
    base_model: nn.Module,
    adapter_dir: str | Path,
    *,
    is_trainable: bool = False,
    adapter_name: str = "default",
    quantization: BaseQuantization | None = None,
) -> PeftModel:
    """Load a saved adapter onto a base model.

    Handles every elmtune adapter (sub-projections included) and adapters saved by plain peft.

    Args:
        base_model: The base model the adapter was trained on (modified in place, as with peft).
        adapter_dir: Directory written by :func:`save_adapter` (or by peft's ``save_pretrained``).
        is_trainable: Keep adapter parameters trainable (to resume training; the train/eval mode is left as it
            is); otherwise everything is frozen and the model is put in eval mode.
        adapter_name: peft's adapter name.
        quantization: Quantise the base's Linear layers (QLoRA) after splitting fused modules.

    Returns:
        The peft model.

    Raises:
        AdapterError: Missing files, a pickle checkpoint, a base model whose geometry differs from the adapter's base
            (the message names the first mismatching layer), or tensors that do not fit.
    """
    model, metadata = attach_adapter_from_dir(
        base_model, adapter_dir, adapter_name=adapter_name, quantization=quantization
    )
    _set_saved_tensors(model, adapter_dir, metadata, adapter_name)
    if not is_trainable:
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
    return model


__all__ = [
    "attach_adapter_from_dir",
    "load_adapter",
    "load_frozen_copy",
    "row_blocks_of",
    "save_adapter",
]
