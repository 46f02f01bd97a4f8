"""``elmtune inspect MODEL``: the per-layer geometry of an OpenELM model, without loading any weights.

With ``--adapter CONFIG_OR_DIR`` it also prints the adapter's per-layer ranks and trainable parameters, with totals.
"""

from __future__ import annotations

from typing import Annotated

import typer

from elmtune.cli.options import ModelArg

AdapterOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        help="An adapter config (YAML) or a saved adapter directory: also print its per-layer ranks and trainable "
        "parameters.",
        show_default=False,
    ),
]


def inspect(model: ModelArg, adapter: AdapterOpt = None) -> None:
    """Print the per-layer geometry of MODEL: heads, projection shapes, parameters per layer, total."""
    from rich.console import Console

    from elmtune.models.describe import geometry_table, resolve_geometry

    geometry, source = resolve_geometry(model)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(geometry_table(geometry, title=f"{model} ({source})"))
    if adapter is not None:
        from elmtune.adapters.describe import describe_adapter

        console.print(describe_adapter(model, adapter))
