"""A build's outcome at a glance: base vs tuned scores, final training metrics, the merge check, sample replies.

Read from a finished build directory (``build.json`` and the files each stage wrote), so the same summary ends
``elmtune build`` and ``elmtune quickstart`` and heads the build's report. An evaluation stage with an adapter is set
against the latest earlier evaluation of the same model without one, on the same protocol, data and tasks: its base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmtune.build.record import BuildRecord, StageRecord
from elmtune.evaluation.run_report import metric_values

TRAINING_METRICS = ("loss", "rewards/accuracies", "rewards/margins")
"""The last values of these training metrics are summarised (the DPO ones only where the run logged them)."""


@dataclass(frozen=True)
class ScoreChange:
    """One task's headline metric before and after tuning.

    Attributes:
        task: The task (or preference data set).
        metric: The metric (``acc`` for multiple choice).
        base: The base model's value (None when the base was not evaluated).
        tuned: The tuned model's value.
        base_stage: The evaluation stage of the base (None without one).
        tuned_stage: The evaluation stage of the tuned model.
    """

    task: str
    metric: str
    base: float | None
    tuned: float | None
    base_stage: str | None
    tuned_stage: str


@dataclass(frozen=True)
class TrainingOutcome:
    """The end of one sft or dpo stage.

    Attributes:
        stage: The stage name.
        steps: Optimizer steps done.
        metrics: The last logged value of each of :data:`TRAINING_METRICS` the run logged.
    """

    stage: str
    steps: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class MergeCheck:
    """The check of one merge stage (the merged model against the unmerged adapter).

    Attributes:
        stage: The stage name.
        passed: Whether the check passed (None when the merge was not checked).
        max_abs_diff: Largest absolute logit difference.
        top1_agreement: Share of positions whose top-1 token agrees.
    """

    stage: str
    passed: bool | None
    max_abs_diff: float | None
    top1_agreement: float | None


@dataclass(frozen=True)
class SampleReply:
    """One reply of a generate stage."""

    stage: str
    prompt: str
    reply: str


@dataclass(frozen=True)
class BuildSummary:
    """What a build produced (see the module docstring).

    Attributes:
        build_dir: The build directory.
        scores: Headline metrics of every evaluation stage, with the base's value where there is a base.
        trainings: The end of each training stage.
        merges: The check of each merge stage.
        samples: The replies of each generate stage.
        outputs: Each stage's name and output path (relative to the build directory) and status.
    """

    build_dir: Path
    scores: tuple[ScoreChange, ...]
    trainings: tuple[TrainingOutcome, ...]
    merges: tuple[MergeCheck, ...]
    samples: tuple[SampleReply, ...]
    outputs: tuple[tuple[str, str, str], ...]


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _changes(
    tuned: dict[tuple[str, str], float | None], base: dict[tuple[str, str], float | None], names: tuple[str | None, str]
) -> list[ScoreChange]:
    """Each task's headline: its first metric that the base has too (its first metric when there is no base)."""
    changes: list[ScoreChange] = []
    for task in dict.fromkeys(task for task, _ in tuned):
        metrics = [metric for t, metric in tuned if t == task]
        shared = [metric for metric in metrics if base.get((task, metric)) is not None]
        metric = (shared or metrics)[0]
        changes.append(ScoreChange(task, metric, base.get((task, metric)), tuned[(task, metric)], *names))
    return changes


def _scores(build_dir: Path, stages: list[StageRecord]) -> list[ScoreChange]:
    changes: list[ScoreChange] = []
    bases: list[tuple[str, tuple[Any, ...], dict[tuple[str, str], float | None]]] = []  # stage, what, values
    for entry in stages:
        payload = _json(build_dir / entry.output / "results.json") if entry.kind == "eval" else None
        if payload is None:
            continue
        model, settings = payload.get("model", {}), payload.get("settings", {})
        what = (model.get("name"), *(str(settings.get(key)) for key in ("protocol", "data", "tasks", "limit")))
        tuned = metric_values(payload["results"])
        if payload.get("baseline"):  # the evaluation compared the tuned model with its base itself (preference pairs)
            changes += _changes(tuned, metric_values(payload["baseline"]["results"]), (entry.name, entry.name))
        elif model.get("adapter"):
            match = next((base for base in reversed(bases) if base[1] == what), None)
            changes += _changes(tuned, match[2] if match else {}, (match[0] if match else None, entry.name))
        else:
            bases.append((entry.name, what, tuned))
    return changes


def _training(build_dir: Path, entry: StageRecord) -> TrainingOutcome | None:
    metrics_file = (build_dir / entry.output).parent / "metrics.jsonl"  # the output is the run's final/
    if not metrics_file.is_file():
        return None
    rows = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if "loss" in row]
    if not rows:
        return None
    last = {key: float(rows[-1][key]) for key in TRAINING_METRICS if key in rows[-1]}
    return TrainingOutcome(entry.name, int(rows[-1].get("step", len(rows))), last)


def _merge(build_dir: Path, entry: StageRecord) -> MergeCheck | None:
    report = _json(build_dir / entry.output / "merge_report.json")
    if report is None:
        return None
    check = report.get("verification") or {}
    return MergeCheck(entry.name, check.get("passed"), check.get("max_abs_diff"), check.get("top1_agreement"))


def _samples(build_dir: Path, entry: StageRecord) -> list[SampleReply]:
    replies = build_dir / entry.output
    if not replies.is_file():
        return []
    rows = [json.loads(line) for line in replies.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [SampleReply(entry.name, str(row.get("prompt", "")), str(row.get("reply", ""))) for row in rows]


def summarize_build(build_dir: str | Path) -> BuildSummary:
    """The summary of the build in ``build_dir``.

    Raises:
        FileNotFoundError: ``build_dir`` holds no ``build.json``.
    """
    build_dir = Path(build_dir)
    record = BuildRecord.load(build_dir)
    if record is None:
        raise FileNotFoundError(build_dir / "build.json")
    stages = [entry for entry in record.stages.values() if entry.status == "done"]
    trainings = [_training(build_dir, e) for e in stages if e.kind in ("sft", "dpo")]
    merges = [_merge(build_dir, e) for e in stages if e.kind == "merge"]
    return BuildSummary(
        build_dir=build_dir,
        scores=tuple(_scores(build_dir, stages)),
        trainings=tuple(t for t in trainings if t is not None),
        merges=tuple(m for m in merges if m is not None),
        samples=tuple(s for e in stages if e.kind == "generate" for s in _samples(build_dir, e)),
        outputs=tuple((e.name, e.output, e.status) for e in record.stages.values()),
    )


__all__ = [
    "TRAINING_METRICS",
    "BuildSummary",
    "MergeCheck",
    "SampleReply",
    "ScoreChange",
    "TrainingOutcome",
    "summarize_build",
]
