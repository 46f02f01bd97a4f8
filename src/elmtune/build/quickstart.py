"""``run_quickstart``: the whole job in one call, as a build of a recipe shipped with the package.

Without a model it builds ``quickstart-tiny`` (the ``tiny`` preset and the shipped samples, offline, about a minute
on two CPU cores); with one (``apple/OpenELM-270M``, a local checkpoint) it builds ``quickstart``, the same stages
with settings for a real model. The stages: evaluate the base, LoRA SFT, evaluate again, DPO continuing from the SFT
adapter, a checked merge, sample replies; then the build's report. Being a build, running it again skips what is
done and an interrupted quickstart resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elmtune.build.recipe import BuildRecipe, parse_build_recipe
from elmtune.build.run import BuildResult, run_build
from elmtune.build.summary import BuildSummary, summarize_build
from elmtune.recipe_yaml import read_config_file
from elmtune.shipped_files import shipped_recipe

TINY_RECIPE = "quickstart-tiny"
MODEL_RECIPE = "quickstart"
DEFAULT_OUTPUT = Path("quickstart")


def quickstart_recipe(model: str | None = None) -> BuildRecipe:
    """The quickstart's recipe: ``quickstart-tiny`` without a model (or for ``tiny``), else ``quickstart`` on it."""
    name = TINY_RECIPE if model in (None, "tiny") else MODEL_RECIPE
    path = shipped_recipe(name)
    if path is None:
        raise FileNotFoundError(f"the shipped recipe {name}.yaml is missing from the installed package")
    data = read_config_file(path, "quickstart recipe")
    if model is not None:
        data["model"] = model
    return parse_build_recipe(data, source=str(path))


@dataclass(frozen=True)
class QuickstartResult:
    """What :func:`run_quickstart` did.

    Attributes:
        build: The build's outcome per stage.
        summary: Base vs tuned scores, training ends, the merge check, sample replies and the outputs.
        merged: The merged model directory (None if the recipe had no finished merge stage).
        report: The build's HTML report.
    """

    build: BuildResult
    summary: BuildSummary
    merged: Path | None
    report: Path


def run_quickstart(
    output: str | Path = DEFAULT_OUTPUT,
    *,
    model: str | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Build the quickstart into ``output`` (see the module docstring).

    Args:
        output: The build directory (absent, empty, or an earlier quickstart to continue).
        model: The base model (a preset, hub id or directory); None for the offline tiny run.
        overwrite: Accept a non-empty directory that is not a build, and rebuild every stage.
        say: Receives the progress lines (default: stderr).

    Returns:
        The :class:`QuickstartResult`.
    """
    recipe = quickstart_recipe(model)
    kwargs = {} if say is None else {"say": say}
    result = run_build(recipe, output, overwrite=overwrite, **kwargs)
    summary = summarize_build(result.build_dir)
    merged = next((Path(result.build_dir) / out for name, out, status in summary.outputs if name == "merge"), None)
    return QuickstartResult(result, summary, merged, Path(result.build_dir) / "report.html")


__all__ = ["DEFAULT_OUTPUT", "MODEL_RECIPE", "TINY_RECIPE", "QuickstartResult", "quickstart_recipe", "run_quickstart"]
