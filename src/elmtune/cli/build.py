"""``elmtune build RECIPE.yaml -o DIR``: run a pipeline of sft, dpo, eval, merge, export and generate stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from elmtune.cli.options import OverwriteOpt


def build(
    recipe: Annotated[
        Path,
        typer.Argument(help="Build recipe: model and an ordered list of stages (docs/build.md).", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Build directory: absent, empty, or an earlier build to continue (see --overwrite).",
            show_default=False,
        ),
    ],
    from_stage: Annotated[
        str | None,
        typer.Option("--from", help="Rerun this stage and every stage after it, built or not.", show_default=False),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan (each stage: run, resume or skip, and why); write nothing."),
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run RECIPE's stages in order into one build directory, skipping stages already built with the same settings.

    Every stage is checked before any work. A stage whose settings, inputs and upstream outputs are unchanged and
    whose output is complete is skipped, so running the command again resumes an interrupted build (an sft or dpo
    stage from its latest checkpoint). DIR/build.json records each stage's fingerprint, status, timings and output.
    """
    from elmtune.build.recipe import load_build_recipe
    from elmtune.build.run import run_build

    parsed = load_build_recipe(recipe)
    result = run_build(parsed, output, from_stage=from_stage, dry_run=dry_run, overwrite=overwrite, say=typer.echo)
    if result.dry_run:
        return
    from elmtune.build.summary import summarize_build
    from elmtune.build.summary_report import summary_blocks
    from elmtune.report_html import Report, to_markdown

    ran = sum(outcome.action != "skip" for outcome in result.stages)
    blocks = summary_blocks(summarize_build(output), full_paths=True)
    typer.echo(to_markdown(Report(f"Build summary: {output}", tuple(blocks))))
    typer.echo(
        f"build complete: {ran} stage(s) run, {len(result.stages) - ran} skipped; record: {output / 'build.json'}; "
        f"report: {output / 'report.html'}"
    )
