"""``run_build``: run a recipe's stages in order into one build directory, skipping what is already built.

Build directory::

    build.json        per stage: fingerprint and what it covers, status, timings, output and its digest
    01-NAME/          the first stage's directory (an sft/dpo run directory, eval results, a merged model...)
    02-NAME/          ...

The directory may be absent, empty, or an earlier build of any recipe (its ``build.json`` decides what is skipped);
anything else is refused unless ``overwrite``, which also rebuilds every stage. Each stage publishes its output whole
(as its command does), and ``build.json`` is rewritten when a stage starts, ends or fails, so an interrupted build
resumes at the stage it stopped in; an interrupted sft or dpo stage continues from its latest checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from elmtune.build.fingerprint import content_digest, stage_directory, stage_output
from elmtune.build.plan import Action, StagePlan, plan_stage
from elmtune.build.recipe import BuildRecipe
from elmtune.build.record import BUILD_FILE, BuildRecord, StageRecord, utc_now
from elmtune.build.references import referenced_stage
from elmtune.build.run_report import write_build_report
from elmtune.build.stage_runs import run_stage
from elmtune.finetune.trackers import require_tracker_packages
from elmtune.models.model_names import check_model_name
from elmtune.output_paths import check_output_dir

Say = Callable[[str], None]


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StageOutcome:
    """What the build did with one stage.

    Attributes:
        name: The stage name.
        action: ``run``, ``resume`` or ``skip`` (for a dry run: what it would do).
        reason: Why.
        output: The stage's output path.
        seconds: How long it ran (None when skipped or planned only).
    """

    name: str
    action: Action
    reason: str
    output: Path
    seconds: float | None = None


@dataclass(frozen=True)
class BuildResult:
    """What :func:`run_build` did.

    Attributes:
        build_dir: The build directory.
        stages: One outcome per stage, in order.
        dry_run: Nothing was run or written.
    """

    build_dir: Path
    stages: tuple[StageOutcome, ...]
    dry_run: bool = False


def open_build_dir(build_dir: Path, *, overwrite: bool) -> BuildRecord | None:
    """Check that ``build_dir`` can hold the build (nothing is written) and return its earlier build's record.

    Returns:
        The record of the earlier build in ``build_dir``; None for a new build (or with ``overwrite``).

    Raises:
        OutputPathError: ``build_dir`` is a file, or cannot be created.
        OutputExistsError: ``build_dir`` holds something other than a build and ``overwrite`` is false.
        ElmtuneError: An unreadable ``build.json`` (without ``overwrite``).
    """
    if (build_dir / BUILD_FILE).is_file():
        return None if overwrite else BuildRecord.load(build_dir)
    check_output_dir(build_dir, overwrite=overwrite)
    return None


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _resolver(recipe: BuildRecipe, build_dir: Path) -> Callable[[str | None], str | None]:
    def resolve(value: str | None) -> str | None:
        name = referenced_stage(value)
        if name is None:
            return value
        position = recipe.index(name)
        stage = recipe.stages[position]
        return str(stage_output(stage_directory(build_dir, position, stage), stage))

    return resolve


def _run_recorded(plan: StagePlan, record: BuildRecord, build_dir: Path, recipe: BuildRecipe) -> tuple[float, str]:
    """Run one stage, keeping ``build.json`` up to date; returns its seconds and summary."""
    stage = plan.stage
    if plan.fingerprint is None or plan.covered is None:
        raise RuntimeError(f"stage {stage.name}: an upstream stage has no finished output")
    entry = StageRecord(
        name=stage.name,
        kind=stage.kind,
        fingerprint=plan.fingerprint,
        covered=plan.covered,
        status="running",
        output=plan.output.relative_to(build_dir).as_posix(),
        started=utc_now(),
    )
    record.stages[stage.name] = entry
    record.save(build_dir)
    start = time.perf_counter()
    try:
        summary = run_stage(plan, _resolver(recipe, build_dir))
    except BaseException as err:
        entry.status, entry.finished = "failed", utc_now()
        entry.seconds = round(time.perf_counter() - start, 3)
        entry.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        record.save(build_dir)
        raise
    entry.seconds = round(time.perf_counter() - start, 3)
    entry.status, entry.finished = "done", utc_now()
    entry.output_digest = content_digest(plan.output)
    record.save(build_dir)
    return entry.seconds, summary


def _dry_run(
    recipe: BuildRecipe, build_dir: Path, record: BuildRecord | None, from_position: int | None, say: Say
) -> BuildResult:
    rebuilt: list[str] = []
    outcomes = []
    say(f"plan for {build_dir} ({len(recipe.stages)} stages; dry run: nothing is run or written)")
    for position, stage in enumerate(recipe.stages):
        plan = plan_stage(recipe, position, build_dir, record, rebuilt=rebuilt, from_position=from_position)
        if plan.action != "skip":
            rebuilt.append(stage.name)
        say(f"[{position + 1}/{len(recipe.stages)}] {stage.name} ({stage.kind}): {plan.action} ({plan.reason})")
        outcomes.append(StageOutcome(stage.name, plan.action, plan.reason, plan.output))
    return BuildResult(build_dir, tuple(outcomes), dry_run=True)


def _check_models(recipe: BuildRecipe, first: int) -> None:
    """Refuse a model of a stage from ``first`` on that names nothing (a preset, a local directory or a hub id)."""
    for stage in recipe.stages[first:]:
        if referenced_stage(stage.model) is None:
            check_model_name(stage.model)


def run_build(
    recipe: BuildRecipe,
    build_dir: str | Path,
    *,
    from_stage: str | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    say: Say = _say_on_stderr,
) -> BuildResult:
    """Run the recipe's stages in order into ``build_dir``, skipping stages already built with the same settings.

    Args:
        recipe: The checked recipe.
        build_dir: The build directory (see the module docstring).
        from_stage: Rerun this stage and every stage after it, built or not.
        dry_run: Print the plan (each stage: run, resume or skip, and why) and write nothing.
        overwrite: Accept a non-empty directory that is not a build, and rebuild every stage.
        say: Receives the progress lines (one when a stage starts or is skipped, one when it ends, with the time).

    Returns:
        The :class:`BuildResult`.

    Raises:
        ConfigError: ``from_stage`` names no stage, or a training stage reports to a tracker that is not installed.
        ModelNotFoundError: A stage's model is neither a preset, an existing directory nor a hub id.
        OutputPathError: ``build_dir`` cannot hold the build.
        ElmtuneError: A stage failed (its record says so; the next run starts again at that stage).
    """
    build_dir = Path(build_dir)
    from_position = recipe.index(from_stage) if from_stage is not None else None
    for stage in recipe.stages:  # a missing tracker package stops the build before its first stage
        if stage.kind in ("sft", "dpo"):
            require_tracker_packages(stage.settings.train.report_to)
    record = open_build_dir(build_dir, overwrite=overwrite)
    if dry_run:
        return _dry_run(recipe, build_dir, record, from_position, say)
    names = {stage.name for stage in recipe.stages}
    record = BuildRecord(
        recipe=recipe.source,
        model=recipe.model,
        stages={name: entry for name, entry in (record.stages if record else {}).items() if name in names},
    )
    rebuilt: list[str] = []
    outcomes = []
    for position, stage in enumerate(recipe.stages):
        plan = plan_stage(recipe, position, build_dir, record, rebuilt=rebuilt, from_position=from_position)
        head = f"[{position + 1}/{len(recipe.stages)}] {stage.name} ({stage.kind})"
        if plan.action == "skip":
            say(f"{_clock()} {head}: skip ({plan.reason})")
            outcomes.append(StageOutcome(stage.name, "skip", plan.reason, plan.output))
            continue
        if not rebuilt:  # the first stage to run: a missing model stops the build before it starts
            _check_models(recipe, position)
            build_dir.mkdir(parents=True, exist_ok=True)
        say(f"{_clock()} {head}: {'resume' if plan.action == 'resume' else 'start'} ({plan.reason})")
        seconds, summary = _run_recorded(plan, record, build_dir, recipe)
        rebuilt.append(stage.name)
        say(f"{_clock()} {head}: done in {seconds:.1f} s -> {plan.output}")
        if summary:
            say("\n".join(f"    {line}" for line in summary.splitlines()))
        outcomes.append(StageOutcome(stage.name, plan.action, plan.reason, plan.output, seconds))
    build_dir.mkdir(parents=True, exist_ok=True)
    record.save(build_dir)
    write_build_report(build_dir)  # after every stage's output is published: they stay intact
    return BuildResult(build_dir, tuple(outcomes))


__all__ = ["BuildResult", "StageOutcome", "open_build_dir", "run_build"]
