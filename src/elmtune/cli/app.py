"""The ``elmtune`` command: a Typer root that only assembles the per-command modules.

Every command module imports torch, transformers and datasets inside its command body, so ``elmtune --help`` and
``elmtune --version`` stay instant.
"""

from __future__ import annotations

import sys

import typer

from elmtune import __version__
from elmtune.cli import eval as eval_cmd
from elmtune.cli import export as export_cmd
from elmtune.cli import inspect as inspect_cmd
from elmtune.cli import merge as merge_cmd
from elmtune.cli import train as train_cmd
from elmtune.errors import ElmtuneError

app = typer.Typer(
    name="elmtune",
    help="Fine-tune, align, evaluate, merge and export Apple's OpenELM models (LoRA/DoRA, SFT, DPO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"elmtune {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """elmtune: parameter-efficient fine-tuning for OpenELM."""


app.command("inspect")(inspect_cmd.inspect)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.eval)
app.command("export")(export_cmd.export)
app.command("merge")(merge_cmd.merge)
app.command("merge-adapters")(merge_cmd.merge_adapters)


def main() -> None:
    """Console-script entry point: user errors print one line and exit 1, without a traceback."""
    try:
        app()
    except ElmtuneError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
