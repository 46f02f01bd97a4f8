"""``elmtune recipes``: list the recipes shipped with elmtune, one line each."""

from __future__ import annotations

import typer


def recipes() -> None:
    """List the shipped recipes: give a name to `elmtune train --config NAME` or `elmtune build NAME`."""
    from elmtune.shipped_files import shipped_recipes

    found = shipped_recipes()
    width = max(len(recipe.name) for recipe in found)
    for recipe in found:
        typer.echo(f"{recipe.name:<{width}}  {recipe.summary}")
