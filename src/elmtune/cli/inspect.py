"""``elmtune inspect MODEL``: the per-layer geometry of a model (OpenELM or any transformers causal LM), no weights.

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
    """Print the per-layer geometry of MODEL: projection shapes (and heads for OpenELM), parameters per layer, total.

    MODEL is an OpenELM preset, hub id or directory, or the directory of any transformers causal LM (Llama, OLMo,
    Phi-3, GPT-NeoX, OPT, GPT-2...), built on the meta device: no weights are loaded.
    """
    from rich.console import Console

    from elmtune.models.describe import model_table

    table = model_table(model)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(table)
    if adapter is not None:
        from elmtune.adapters.describe import describe_adapter

        console.print(describe_adapter(model, adapter))
