"""The ``elmtune`` command: a Typer root that only assembles the per-command modules.

Every command module imports torch, transformers and datasets inside its command body, so ``elmtune --help`` and
``elmtune --version`` stay instant.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import NoReturn

import typer

from elmtune import __version__
from elmtune.cli import build as build_cmd
from elmtune.cli import chat as chat_cmd
from elmtune.cli import eval as eval_cmd
from elmtune.cli import export as export_cmd
from elmtune.cli import generate as generate_cmd
from elmtune.cli import inspect as inspect_cmd
from elmtune.cli import merge as merge_cmd
from elmtune.cli import plan as plan_cmd
from elmtune.cli import push as push_cmd
from elmtune.cli import quickstart as quickstart_cmd
from elmtune.cli import recipes as recipes_cmd
from elmtune.cli import report as report_cmd
from elmtune.cli import train as train_cmd
from elmtune.cli.examples import epilog
from elmtune.errors import ElmtuneError, UsageError

app = typer.Typer(
    name="elmtune",
    help="Fine-tune, align, evaluate, merge and export Apple's OpenELM models (LoRA/DoRA, SFT, DPO).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs are reflowed to the terminal width
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
    _debug["on"] = bool(os.environ.get("ELMTUNE_DEBUG")) or debug  # set afresh by every invocation


# Every command registers with its --help examples (elmtune.cli.examples); a test fails for one without.
app.command("quickstart", epilog=epilog("quickstart"))(quickstart_cmd.quickstart)
app.command("inspect", epilog=epilog("inspect"))(inspect_cmd.inspect)
app.command("train", epilog=epilog("train"))(train_cmd.train)
app.command("plan", epilog=epilog("plan"))(plan_cmd.plan)
app.command("eval", epilog=epilog("eval"))(eval_cmd.eval)
app.command("export", epilog=epilog("export"))(export_cmd.export)
app.command("merge", epilog=epilog("merge"))(merge_cmd.merge)
app.command("merge-adapters", epilog=epilog("merge-adapters"))(merge_cmd.merge_adapters)
app.command("generate", epilog=epilog("generate"))(generate_cmd.generate)
app.command("chat", epilog=epilog("chat"))(chat_cmd.chat)
app.command("build", epilog=epilog("build"))(build_cmd.build)
app.command("recipes", epilog=epilog("recipes"))(recipes_cmd.recipes)
app.command("push", epilog=epilog("push"))(push_cmd.push)
app.command("report", epilog=epilog("report"))(report_cmd.report)


OPTIONAL_KERNEL_NOTE = "Failed to load CPU gemm_4bit_forward from kernels-community"
"""bitsandbytes' log line, at import, on CPUs with AVX512-BF16 when the optional ``kernels`` package is missing."""


def _drop_optional_kernel_note(record: logging.LogRecord) -> bool:
    """Logging filter: False for bitsandbytes' note about its optional ``kernels`` package (see :func:`main`)."""
    return not record.getMessage().startswith(OPTIONAL_KERNEL_NOTE)


def main() -> None:
    """Console-script entry point: every error prints one line, without a traceback unless ``--debug`` is given.

    Exit codes: 0 success, 1 a failure (including unexpected errors), 2 bad usage (argument parsing, or a
    :class:`~elmtune.errors.UsageError` such as an invalid recipe field), 130 interrupted. ``--debug`` (or
    ``ELMTUNE_DEBUG=1``) prints the traceback above the error line and keeps the exit code.

    peft imports bitsandbytes whenever it is installed, and bitsandbytes then logs, on CPUs with AVX512-BF16, that
    its optional ``kernels`` package (a faster 4-bit CPU matmul) is missing: a line on every command that is neither
    an error nor about the command. The command line drops that one line (docs/training.md mentions the package for
    4-bit bases on the CPU); everything else bitsandbytes logs still shows.
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_note)
    try:
        app()
    except KeyboardInterrupt as err:
        _fail(err, "interrupted", 130)
    except ElmtuneError as err:
        _fail(err, str(err), 2 if isinstance(err, UsageError) else 1)
    except Exception as err:  # an error we did not anticipate: still one line, the traceback on request
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = "" if _debug["on"] else " (unexpected; rerun with --debug for the traceback)"
        _fail(err, f"{type(err).__name__}: {first}{hint}", 1)


def _fail(err: BaseException, message: str, code: int) -> NoReturn:
    """Print ``err``'s traceback (with ``--debug`` only), then ``error: MESSAGE``, and exit with ``code``."""
    if _debug["on"]:
        traceback.print_exception(err, file=sys.stderr)
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
