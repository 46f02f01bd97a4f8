"""``elmtune report DIR``: render the report of a training run, evaluation, merge or build directory again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from elmtune.errors import UsageError


def render_report(directory: Path) -> Path:
    """Write ``report.md`` and ``report.html`` into ``directory``, whose kind is detected from its files.

    Args:
        directory: A build directory (``build.json``), a training run directory (``config.yaml`` +
            ``metrics.jsonl``), an evaluation's results directory (``results.json``), a merged directory
            (``merge_report.json``) or a combined adapter (``combine_report.json``).

    Returns:
        The HTML report.

    Raises:
        UsageError: ``directory`` is none of these.
    """
    from elmtune.build.run_report import is_build_dir, write_build_report
    from elmtune.evaluation.run_report import is_results_dir, write_eval_report
    from elmtune.finetune.run_report import is_run_dir, write_run_report
    from elmtune.merging.combine_report import is_combined_dir, write_combine_report
    from elmtune.merging.run_report import is_merged_dir, write_merge_report

    if is_build_dir(directory):
        return write_build_report(directory)
    if is_run_dir(directory):
        return write_run_report(directory)
    if is_results_dir(directory):
        return write_eval_report(directory)
    if is_merged_dir(directory):
        return write_merge_report(directory)
    if is_combined_dir(directory):
        return write_combine_report(directory)
    raise UsageError(
        f"{directory} is not a training run, evaluation, merged, combined adapter or build directory "
        "(no config.yaml + metrics.jsonl, results.json, merge_report.json, combine_report.json or build.json)"
    )


DirectoryArg = Annotated[Path, typer.Argument(help="A training run, evaluation, merged or build directory.")]


def report(directory: DirectoryArg) -> None:
    """Render the report (report.md and a self-contained report.html) of a directory again."""
    typer.echo(str(render_report(directory)))
