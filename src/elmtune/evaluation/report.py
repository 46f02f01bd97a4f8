"""Evaluation results: metrics, per-task results, the results JSON, per-example JSON Lines and Markdown tables.

Predictions, ``acc`` / ``acc_norm`` and their standard errors are computed as lm-eval computes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elmtune.evaluation.data import ChoiceScore, Question
from elmtune.output_paths import StagedDirectory

PROTOCOL_DESCRIPTIONS = {
    "apple": "LLM-Adapters training prompt, log-likelihood of 'the correct answer is X' (Apple/CoreNet)",
    "llm-adapters": "LLM-Adapters evaluation prompt, generation + first regex hit",
    "lm-eval": "lm-eval task prompts, log-likelihood of each choice",
    "mc": "local multiple-choice file, log-likelihood of each choice (lm-eval multiple_choice)",
    "lm-eval-harness": "lm-eval's own evaluator on this model",
    "preference": "held-out preference pairs, summed reply log-probs; implicit rewards against the base (TRL's DPO)",
}


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (as ``numpy.argmax``)."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


@dataclass(frozen=True)
class Prediction:
    """Per-question predictions: ``pred`` by summed log-likelihood, ``pred_norm`` by log-likelihood per character."""

    pred: int
    pred_norm: int


def predict(question: Question, scores: Sequence[ChoiceScore]) -> Prediction:
    """The argmax of the summed log-likelihoods and of the log-likelihoods divided by each choice's character length."""
    lls = [score.loglikelihood for score in scores]
    per_char = [ll / length for ll, length in zip(lls, question.norm_lengths, strict=True)]
    return Prediction(argmax(lls), argmax(per_char))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (0.0 for no values)."""
    return sum(values) / len(values) if values else 0.0


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample standard deviation (n - 1), as lm-eval's ``mean_stderr``."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


@dataclass(frozen=True)
class MetricValue:
    """One metric of one task: its mean over ``n`` questions and the standard error of that mean.

    Attributes:
        metric: The metric's name.
        value: The mean.
        stderr: The standard error of the mean (NaN when unknown).
        n: Questions (or pairs) averaged.
        percent: Whether the value is a share, shown in percent (accuracies); else a plain number, shown as is
            (margins, rewards, log-probabilities).
    """

    metric: str
    value: float
    stderr: float
    n: int
    percent: bool = True


def mean_metric(name: str, values: Sequence[float], *, percent: bool = True) -> MetricValue:
    """The metric ``name`` as the mean of per-question ``values``, with its standard error (see ``MetricValue``)."""
    return MetricValue(name, mean(values), mean_stderr(values), len(values), percent)


@dataclass
class TaskResult:
    """Everything measured on one task.

    Attributes:
        task: Task name.
        protocol: ``apple``, ``llm-adapters``, ``lm-eval``, ``mc`` or ``lm-eval-harness``.
        metrics: The task's metrics.
        seconds: Wall time of scoring (tokenisation included, loading excluded).
        data: Where the rows came from: local files with SHA-256, or a Hub dataset with its fingerprint.
        examples: Per-example records written to the JSON Lines file.
        shots: Few-shot examples in the prompt (always 0 for the built-in protocols).
        bos: Whether BOS was prepended.
        details: Protocol details (layout, beams, template...).
        note: One line printed under the table (counts of skipped rows), or ``""``.
    """

    task: str
    protocol: str
    metrics: list[MetricValue]
    seconds: float
    data: list[dict[str, str]]
    examples: list[dict[str, Any]] = field(default_factory=list)
    shots: int = 0
    bos: bool | None = True
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def n(self) -> int:
        """Number of questions."""
        return self.metrics[0].n if self.metrics else 0

    def metric(self, name: str) -> MetricValue | None:
        """The metric called ``name``, if measured."""
        return next((m for m in self.metrics if m.metric == name), None)


@dataclass
class ModelResults:
    """All task results of one model (or model + adapter)."""

    model: str
    adapter: str | None
    label: str
    tasks: list[TaskResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per task and metric, as stored in ``results.json``."""
        out = []
        for task in self.tasks:
            for metric in task.metrics:
                out.append(
                    {
                        "task": task.task,
                        "metric": metric.metric,
                        "value": _finite(metric.value),
                        "stderr": _finite(metric.stderr),
                        "n": metric.n,
                        "protocol": task.protocol,
                        "shots": task.shots,
                        "bos": task.bos,
                        "model": self.model,
                        "adapter": self.adapter,
                        "data": task.data,
                        "seconds": round(task.seconds, 3),
                        "questions_per_second": round(task.n / task.seconds, 3) if task.seconds > 0 else None,
                        "details": task.details,
                    }
                )
        return out


@dataclass
class EvalReport:
    """The results of one ``elmtune eval`` run: one model, or a model and the model it is compared with."""

    results: ModelResults
    baseline: ModelResults | None = None
    output_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        payload: dict[str, Any] = {**self.meta, "results": self.results.rows(), "settings": self.results.settings}
        payload["model"] = {"name": self.results.model, "adapter": self.results.adapter}
        if self.baseline is not None:
            payload["baseline"] = {
                "model": {"name": self.baseline.model, "adapter": self.baseline.adapter},
                "results": self.baseline.rows(),
            }
            payload["difference"] = [
                {"task": task, "metric": metric, "difference": _finite(a - b)}
                for task, metric, a, b in _paired(self.results, self.baseline)
            ]
        return payload

    def markdown(self) -> str:
        """A Markdown table of every task and metric (two columns and their difference when comparing)."""
        return markdown_table(self.results, self.baseline)

    def write(self, directory: Path, *, overwrite: bool = False) -> None:
        """Write ``results.json``, ``results.md`` and ``examples/<task>.jsonl`` (``baseline-examples/`` too).

        The files are written into a hidden sibling of ``directory`` that replaces it only when complete, so a
        failure leaves ``directory`` as it was and old results are never mixed with new ones.

        Args:
            directory: The directory to create (absent or empty unless ``overwrite``).
            overwrite: Replace an existing non-empty ``directory``.

        Raises:
            OutputPathError: ``directory`` exists and is not empty (without ``overwrite``), is a file, or is not
                writable.
            OutputWriteError: The disk filled up while writing; nothing was left behind.
        """
        staged = StagedDirectory(directory, overwrite=overwrite)
        with staged as tmp:
            (tmp / "results.json").write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
            (tmp / "results.md").write_text(self.markdown() + "\n")
            for folder, results in (("examples", self.results), ("baseline-examples", self.baseline)):
                if results is None:
                    continue
                (tmp / folder).mkdir()
                for task in results.tasks:
                    with (tmp / folder / f"{task.task}.jsonl").open("w") as handle:
                        for example in task.examples:
                            handle.write(json.dumps(example, default=str) + "\n")
            self.output_dir = staged.commit()


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def _paired(a: ModelResults, b: ModelResults) -> list[tuple[str, str, float, float]]:
    pairs = []
    for task in a.tasks:
        other = next((t for t in b.tasks if t.task == task.task), None)
        for metric in task.metrics:
            match = other.metric(metric.metric) if other is not None else None
            if match is not None:
                pairs.append((task.task, metric.metric, metric.value, match.value))
    return pairs


def _percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _number(value: float, percent: bool) -> str:
    if not percent:
        return "–" if value is None or math.isnan(value) else f"{value:.4f}"
    return _percent(value)


def _with_stderr(metric: MetricValue) -> str:
    if math.isnan(metric.stderr):
        return _number(metric.value, metric.percent)
    return f"{_number(metric.value, metric.percent)} ± {_number(metric.stderr, metric.percent)}"


def _difference(metric: MetricValue, other: MetricValue) -> str:
    difference = metric.value - other.value
    return f"{100 * difference:+.2f}" if metric.percent else f"{difference:+.4f}"


def markdown_table(results: ModelResults, baseline: ModelResults | None = None) -> str:
    """Render results as a Markdown table (shares in percent, other values as they are; ± one standard error).

    Args:
        results: The evaluated model's results.
        baseline: Results of the model it is compared with; adds its column and ``Δ = results - baseline``
            (``n/a`` where the baseline has no such metric).

    Returns:
        The table, with a header line saying protocol, shots and BOS handling of every row, and the tasks' notes
        under it.
    """
    if baseline is None:
        lines = ["| task | metric | value | n | protocol | shots | BOS |", "|---|---|---:|---:|---|---:|---|"]
    else:
        lines = [
            f"| task | metric | {results.label} | {baseline.label} | Δ | n | protocol | shots | BOS |",
            "|---|---|---:|---:|---:|---:|---|---:|---|",
        ]
    for task in results.tasks:
        other = None if baseline is None else next((t for t in baseline.tasks if t.task == task.task), None)
        for metric in task.metrics:
            bos = "yes" if task.bos else ("no" if task.bos is False else "tokenizer default")
            tail = f"{metric.n} | {task.protocol} | {task.shots} | {bos} |"
            if baseline is None:
                lines.append(f"| {task.task} | {metric.metric} | {_with_stderr(metric)} | {tail}")
                continue
            match = other.metric(metric.metric) if other is not None else None
            missing = "n/a" if other is not None else "–"
            base = _with_stderr(match) if match is not None else missing
            delta = _difference(metric, match) if match is not None else missing
            lines.append(f"| {task.task} | {metric.metric} | {_with_stderr(metric)} | {base} | {delta} | {tail}")
    notes = [f"{task.task}: {task.note}" for task in results.tasks if task.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def settings_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass config."""
    return json.loads(json.dumps(asdict(config), default=str))
