"""``elmtune quickstart``: evaluate, fine-tune, align, merge and try a model in one command (a shipped build)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from elmtune.cli.options import OverwriteOpt


def quickstart(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Where everything goes: a build directory (absent, empty, or resumed)."),
    ] = Path("quickstart"),
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Run the pipeline with real settings on this model (hub id or directory) instead of the tiny preset.",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Evaluate the base, LoRA SFT, evaluate again, DPO, merge (checked), generate replies, and write a report.

    Without --model it runs offline on the tiny preset (random weights) and the sample data shipped with elmtune, in
    about a minute on two CPU cores; it shows the pipeline, not a useful model. With --model it builds the
    `quickstart` recipe (real settings) on that model. Running it again skips the stages already done.
    """
    from elmtune.build.quickstart import run_quickstart
    from elmtune.build.summary_report import summary_blocks
    from elmtune.report_html import Report, to_markdown

    result = run_quickstart(output, model=model, overwrite=overwrite, say=lambda line: typer.echo(line, err=True))
    blocks = summary_blocks(result.summary, full_paths=True)
    typer.echo(to_markdown(Report(f"Quickstart: {output}", tuple(blocks))))
    typer.echo(f"report: {result.report}")
    if result.merged is not None:
        typer.echo(f"chat with the merged model: elmtune chat {result.merged}")
