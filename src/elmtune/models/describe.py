"""Describe a model's geometry from its config alone (no torch): used by ``elmtune inspect``."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from elmtune.errors import ElmtuneError, ModelNotFoundError
from elmtune.models.geometry import ModelGeometry, format_count, geometry_from_dict
from elmtune.models.presets import PRESETS, preset_name


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
    from elmtune.models.loading import check_model_name

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
