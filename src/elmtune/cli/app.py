"""The ``elmtune`` command: a Typer root that only assembles the per-command modules.

Every command module imports torch, transformers and datasets inside its command body, so ``elmtune --help`` and
``elmtune --version`` stay instant.
"""

from __future__ import annotations

import os
import sys

import typer

from elmtune import __version__
from elmtune.cli import build as build_cmd
from elmtune.cli import chat as chat_cmd
from elmtune.cli import eval as eval_cmd
from elmtune.cli import export as export_cmd
from elmtune.cli import generate as generate_cmd
from elmtune.cli import inspect as inspect_cmd
from elmtune.cli import merge as merge_cmd
from elmtune.cli import push as push_cmd
from elmtune.cli import report as report_cmd
from elmtune.cli import train as train_cmd
from elmtune.errors import ElmtuneError, UsageError

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


_debug = {"on": bool(os.environ.get("ELMTUNE_DEBUG"))}


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full Python traceback of an error."),
) -> None:
    """elmtune: parameter-efficient fine-tuning for OpenELM."""
    _debug["on"] = _debug["on"] or debug


app.command("inspect")(inspect_cmd.inspect)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.eval)
app.command("export")(export_cmd.export)
app.command("merge")(merge_cmd.merge)
app.command("merge-adapters")(merge_cmd.merge_adapters)
app.command("generate")(generate_cmd.generate)
app.command("chat")(chat_cmd.chat)
app.command("build")(build_cmd.build)
app.command("push")(push_cmd.push)
app.command("report")(report_cmd.report)


def main() -> None:
    """Console-script entry point: every error prints one line, without a traceback unless ``--debug`` is given.

    Exit codes: 0 success, 1 a failure (including unexpected errors), 2 bad usage (argument parsing, or a
    :class:`~elmtune.errors.UsageError` such as an invalid recipe field), 130 interrupted.
    """
    try:
        app()
    except KeyboardInterrupt:
        if _debug["on"]:
            raise
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except ElmtuneError as err:
        if _debug["on"]:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2 if isinstance(err, UsageError) else 1)
    except Exception as err:  # an error we did not anticipate: still one line, the traceback on request
        if _debug["on"]:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        typer.echo(f"error: {type(err).__name__}: {first} (unexpected; rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
