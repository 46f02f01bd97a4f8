"""``elmtune inspect MODEL``: the per-layer geometry of an OpenELM model, without loading any weights."""

from __future__ import annotations

from elmtune.cli.options import ModelArg


def inspect(model: ModelArg) -> None:
    """Print the per-layer geometry of MODEL: heads, projection shapes, parameters per layer, total."""
    from rich.console import Console

    from elmtune.models.describe import geometry_table, resolve_geometry

    geometry, source = resolve_geometry(model)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(geometry_table(geometry, title=f"{model} ({source})"))
