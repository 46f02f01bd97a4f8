"""Deciding, per stage, whether a build runs it afresh, resumes it, or skips it, and saying why.

In order, a stage runs when: ``--from`` names it or an earlier stage; an upstream stage it uses was rebuilt in this
build; it was never built; its fingerprint changed (the message names the changed keys); it was interrupted (an sft
or dpo stage with checkpoints of the same settings resumes from the latest one); or its output is missing or was
changed since. Otherwise it is skipped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from elmtune.build.fingerprint import (
    changed_keys,
    content_digest,
    covered_values,
    fingerprint_of,
    output_complete,
    stage_directory,
    stage_output,
)
from elmtune.build.recipe import BuildRecipe, Stage
from elmtune.build.record import BuildRecord, StageRecord

Action = Literal["run", "resume", "skip"]


@dataclass(frozen=True)
class StagePlan:
    """What a build does with one stage.

    Attributes:
        stage: The stage.
        position: Its index in the recipe (from 0).
        directory: ``DIR/NN-name``.
        output: The stage's output path.
        action: ``run`` (afresh), ``resume`` (an sft/dpo run from its latest checkpoint) or ``skip``.
        reason: Why, in a few words.
        covered: What the fingerprint covers; None while an upstream stage is still to be rebuilt.
        fingerprint: The stage's fingerprint; None when ``covered`` is.
    """

    stage: Stage
    position: int
    directory: Path
    output: Path
    action: Action
    reason: str
    covered: dict[str, Any] | None
    fingerprint: str | None


def _has_checkpoints(directory: Path) -> bool:
    checkpoints = directory / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.glob("step-*"))


def _upstream(stage: Stage, record: BuildRecord | None) -> dict[str, str | None] | None:
    """Input key -> the recorded output digest of the referenced stage; None when one has no finished output."""
    digests: dict[str, str | None] = {}
    for key, name in stage.references().items():
        entry = record.stages.get(name) if record is not None else None
        if entry is None or entry.status != "done":
            return None
        digests[key] = entry.output_digest
    return digests


def _when_recorded(
    stage: Stage, entry: StageRecord, covered: dict[str, Any], fingerprint: str, directory: Path, output: Path
) -> tuple[Action, str]:
    """Run, resume or skip a stage that has a record."""
    if entry.fingerprint != fingerprint:
        changed = changed_keys(entry.covered, covered)
        return "run", f"changed since the last build: {', '.join(changed[:4]) or 'fingerprint'}"
    if entry.status != "done":
        if stage.kind in ("sft", "dpo") and _has_checkpoints(directory):
            return "resume", f"{entry.status} last time; resuming from its latest checkpoint"
        return "run", f"{entry.status} last time; starting it again"
    if not output_complete(stage, output):
        return "run", f"its output {output} is missing or incomplete"
    if content_digest(output) != entry.output_digest:
        return "run", f"its output {output} was changed since it was built"
    return "skip", "unchanged, output complete"


def plan_stage(
    recipe: BuildRecipe,
    position: int,
    build_dir: Path,
    record: BuildRecord | None,
    *,
    rebuilt: Collection[str],
    from_position: int | None,
) -> StagePlan:
    """Decide what to do with stage ``position``.

    Args:
        recipe: The recipe.
        position: The stage's index.
        build_dir: The build directory.
        record: The build record (None for a new build).
        rebuilt: Names of the stages rebuilt (or, for a dry run, to be rebuilt) earlier in this build.
        from_position: The index of the ``--from`` stage, if given.

    Returns:
        The :class:`StagePlan`.
    """
    stage = recipe.stages[position]
    directory = stage_directory(build_dir, position, stage)
    output = stage_output(directory, stage)
    upstream = _upstream(stage, record)
    rebuilt_inputs = [name for name in stage.references().values() if name in rebuilt]
    covered = None if upstream is None else covered_values(stage, recipe.model, upstream)
    fingerprint = None if covered is None else fingerprint_of(covered)
    entry = record.stages.get(stage.name) if record is not None else None
    if from_position is not None and position >= from_position:
        action, reason = "run", f"--from {recipe.stages[from_position].name}"
    elif rebuilt_inputs:
        action, reason = "run", f"uses the output of {', '.join(rebuilt_inputs)}, which runs again"
    elif covered is None or fingerprint is None or entry is None:
        action, reason = "run", "not built yet"
    elif entry.output != output.relative_to(build_dir).as_posix():
        action, reason = "run", f"its directory is now {directory.name} (was {entry.output})"
    else:
        action, reason = _when_recorded(stage, entry, covered, fingerprint, directory, output)
    return StagePlan(stage, position, directory, output, action, reason, covered, fingerprint)


__all__ = ["Action", "StagePlan", "plan_stage"]
