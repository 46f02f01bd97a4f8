"""Describe a model's geometry from its config alone, no weights loaded: used by ``elmtune inspect``.

OpenELM's geometry comes from its per-layer config lists (no torch). Any other transformers causal LM is built on the
meta device (shapes only) and described module by module: one row per decoder layer with the shape of each weight
matrix and the layer's parameters, rows for the modules outside the layers, and the total.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from elmtune.errors import ElmtuneError, ModelNotFoundError
from elmtune.models.geometry import ModelGeometry, format_count, geometry_from_dict
from elmtune.models.presets import PRESETS, preset_name

if TYPE_CHECKING:
    from torch import nn


def _read_config(path: Path) -> dict:
    config = json.loads(path.read_text())
    if config.get("model_type") != "openelm":
        raise ElmtuneError(f"{path} is a '{config.get('model_type')}' config, not OpenELM")
    return config


def resolve_geometry(name: str) -> tuple[ModelGeometry, str]:
    """Geometry of a preset, a local checkpoint directory, or a hub id, plus a note on where it came from.

    A hub id is read from the local Hugging Face cache when its ``config.json`` is there; Apple's hub ids fall back to
    the matching preset (identical geometry) otherwise. Nothing is downloaded.

    Raises:
        ModelNotFoundError: Unknown name.
        ElmtuneError: The config is not an OpenELM config.
    """
    from elmtune.models.model_names import check_model_name

    check_model_name(name)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{name}' has no config.json; is it a model directory?")
        return geometry_from_dict(_read_config(path / "config.json")), "config.json"
    if "/" in name:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return geometry_from_dict(_read_config(Path(cached))), "cached config.json"
    preset = preset_name(name)
    if preset is None:
        raise ModelNotFoundError(
            f"unknown model '{name}': give a preset ({', '.join(PRESETS)}), an apple/OpenELM-* hub id or a directory"
        )
    return geometry_from_dict(PRESETS[preset]), f"preset {preset}"


def _shape(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def geometry_table(geometry: ModelGeometry, title: str = "") -> Table:
    """A rich table with one row per layer (heads, projection shapes, parameters) and the totals."""
    table = Table(title=title or None)
    table.add_column("layer")
    for column in ("q/kv heads", "qkv_proj", "out_proj", "proj_1", "proj_2", "parameters"):
        table.add_column(column, justify="right", no_wrap=True)
    for layer in geometry.layers:
        table.add_row(
            str(layer.index),
            f"{layer.num_query_heads}/{layer.num_kv_heads}",
            _shape(layer.qkv_shape),
            _shape(layer.out_shape),
            _shape(layer.proj_1_shape),
            _shape(layer.proj_2_shape),
            f"{layer.num_parameters:,}",
        )
    table.add_section()
    blank = ("",) * 5
    embedding = "token_embeddings (tied head)" if geometry.tied else "token_embeddings"
    table.add_row(embedding, *blank, f"{geometry.embedding_parameters:,}")
    if not geometry.tied:
        table.add_row("lm_head", *blank, f"{geometry.embedding_parameters:,}")
    table.add_row("norm", *blank, f"{geometry.model_dim:,}")
    total = geometry.num_parameters
    table.add_row("total", *blank, f"{total:,} ({format_count(total)})", style="bold")
    return table


def _local_config(name: str) -> Path | None:
    """The ``config.json`` of a local directory or of a hub id in the local cache (None: neither)."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"'{name}' has no config.json; is it a model directory?")
        return path / "config.json"
    if "/" in name:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return Path(cached)
    return None


def build_meta_model(name: str) -> nn.Module:
    """A model with the shapes of ``name`` (preset, local directory or cached hub id) on the meta device.

    Raises:
        ModelNotFoundError: Unknown name, or a hub id that is not in the local cache and is not an Apple preset.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from elmtune.models import OpenELMConfig, OpenELMForCausalLM, register

    register()
    config_file = _local_config(name)
    if config_file is not None:
        config: Any = AutoConfig.from_pretrained(str(config_file.parent))
    elif preset_name(name) is None:
        presets = ", ".join(PRESETS)
        raise ModelNotFoundError(
            f"unknown model '{name}': give a preset ({presets}), an apple/OpenELM-* hub id or a directory"
        )
    else:
        config = OpenELMConfig.from_preset(name)
    with torch.device("meta"):
        if config.model_type == "openelm":
            return OpenELMForCausalLM(config)
        return AutoModelForCausalLM.from_config(config)


def _decoder_layers(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The name and modules of the decoder layer list (the module list as long as the config's layer count)."""
    from torch import nn

    count = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, list(module)
    raise ElmtuneError(f"cannot find the {count} decoder layers of this {model.config.model_type} model")


def _matrices(layer: nn.Module) -> dict[str, tuple[int, ...]]:
    """Relative module name -> shape of its 2-D ``weight`` (as stored), in module order."""
    return {
        name: tuple(module.weight.shape)
        for name, module in layer.named_modules()
        if getattr(getattr(module, "weight", None), "ndim", 0) == 2
    }


def layer_table(model: nn.Module, title: str = "") -> Table:
    """A rich table of any causal LM: per decoder layer its weight shapes and parameters, the other modules, the total.

    Args:
        model: The model (weights may be on the meta device).
        title: Table title (none when empty).
    """
    prefix, layers = _decoder_layers(model)
    columns = list(_matrices(layers[0]))
    table = Table(title=title or None)
    table.add_column("layer")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    for index, layer in enumerate(layers):
        shapes = _matrices(layer)
        cells = ["x".join(map(str, shapes[c])) if c in shapes else "-" for c in columns]
        table.add_row(str(index), *cells, f"{sum(p.numel() for p in layer.parameters()):,}")
    table.add_section()
    blank = ("",) * len(columns)
    outside: dict[str, int] = {}
    for name, param in model.named_parameters():  # a tied head is listed once, as the embedding
        if not name.startswith(f"{prefix}."):
            outside[name.rpartition(".")[0]] = outside.get(name.rpartition(".")[0], 0) + param.numel()
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    for module, count in outside.items():
        label = f"{module} (tied head)" if tied and model.get_submodule(module) is embedding else module
        table.add_row(label, *blank, f"{count:,}")
    total = sum(p.numel() for p in model.parameters())
    table.add_row("total", *blank, f"{total:,} ({format_count(total)})", style="bold")
    return table


def model_table(name: str) -> Table:
    """The ``elmtune inspect MODEL`` table: OpenELM's geometry, or :func:`layer_table` for any other causal LM.

    Raises:
        ModelNotFoundError: Unknown name.
    """
    from elmtune.models.model_names import check_model_name

    check_model_name(name)
    config_file = _local_config(name)
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file is not None else "openelm"
    if model_type == "openelm":
        geometry, source = resolve_geometry(name)
        return geometry_table(geometry, title=f"{name} ({source})")
    return layer_table(build_meta_model(name), title=f"{name} ({model_type}, config.json)")


__all__ = ["build_meta_model", "geometry_table", "layer_table", "model_table", "resolve_geometry"]
