"""One function per protocol: rows -> questions -> scores -> metrics and per-example records for one task."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.evaluation.commonsense import apple_question, apple_subset, load_rows
from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.data import DataError, read_rows
from elmtune.evaluation.generation import generate_answers
from elmtune.evaluation.items import ChoiceScore, Question
from elmtune.evaluation.lmeval_tasks import LM_EVAL_TASKS, lmeval_question, load_hub_rows
from elmtune.evaluation.mc import mc_question
from elmtune.evaluation.metrics import mean, mean_stderr, predict
from elmtune.evaluation.report import MetricValue, TaskResult
from elmtune.evaluation.scoring import LoglikelihoodScorer
from elmtune.file_digest import sha256_file


def _file_record(path: Path) -> list[dict[str, str]]:
    return [{"path": str(path), "sha256": sha256_file(path)}]


def _metric(name: str, values: Sequence[float]) -> MetricValue:
    return MetricValue(name, mean(values), mean_stderr(values), len(values))


def score_task(
    scorer: LoglikelihoodScorer,
    questions: Sequence[Question],
    *,
    protocol: str,
    metrics: Sequence[str],
    data: list[dict[str, str]],
    bos: bool | None,
) -> TaskResult:
    """Score multiple-choice questions of one task and compute ``acc`` / ``acc_norm``.

    Args:
        scorer: The model's scorer.
        questions: The task's questions (all of the same task).
        protocol: Protocol label of the result.
        metrics: Which of ``acc`` and ``acc_norm`` to report.
        data: Data provenance records.
        bos: BOS handling label.

    Returns:
        The task result, with one per-example record per question.
    """
    if not questions:
        raise DataError("no questions to score (an empty data file, or --limit 0)")
    task = questions[0].task
    start = time.perf_counter()
    scores = scorer.score(questions, description=task)
    seconds = time.perf_counter() - start
    columns: dict[str, list[float]] = {"acc": [], "acc_norm": []}
    examples = []
    for question, choice_scores in zip(questions, scores, strict=True):
        prediction = predict(question, choice_scores)
        columns["acc"].append(float(prediction.pred == question.gold))
        columns["acc_norm"].append(float(prediction.pred_norm == question.gold))
        examples.append(_mc_example(question, choice_scores, prediction.pred, prediction.pred_norm))
    return TaskResult(
        task=task,
        protocol=protocol,
        metrics=[_metric(name, columns[name]) for name in metrics],
        seconds=seconds,
        data=data,
        examples=examples,
        bos=bos,
        details={"layout": scorer.layout, "largest_batch": scorer.batcher.largest_batch},
    )


def _mc_example(question: Question, scores: Sequence[ChoiceScore], pred: int, pred_norm: int) -> dict[str, Any]:
    return {
        "task": question.task,
        "index": question.index,
        "gold": question.gold,
        "gold_label": question.labels[question.gold],
        "pred": pred,
        "pred_label": question.labels[pred],
        "pred_norm": pred_norm,
        "acc": float(pred == question.gold),
        "acc_norm": float(pred_norm == question.gold),
        "choices": [
            {
                "label": label,
                "loglikelihood": score.loglikelihood,
                "tokens": score.num_tokens,
                "greedy": score.is_greedy,
                "chars": chars,
            }
            for label, score, chars in zip(question.labels, scores, question.norm_lengths, strict=True)
        ],
        **question.meta,
    }


def run_apple(scorer: LoglikelihoodScorer, task: str, path: Path, config: EvalConfig) -> TaskResult:
    """Apple's multiple-choice protocol on one LLM-Adapters test file."""
    rows = apple_subset(load_rows(path, task), config.limit, config.seed)
    questions = [apple_question(row, task) for row in rows]
    return score_task(
        scorer, questions, protocol="apple", metrics=("acc", "acc_norm"), data=_file_record(path), bos=config.add_bos
    )


def run_llm_adapters(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: str, path: Path, config: EvalConfig
) -> TaskResult:
    """LLM-Adapters' generation protocol on one test file: accuracy and the share of unparseable answers."""
    rows = apple_subset(load_rows(path, task), config.limit, config.seed)
    if not rows:
        raise DataError(f"{path}: no rows")
    start = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer,
        rows,
        task,
        settings=config.generation,
        add_bos=config.add_bos,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    seconds = time.perf_counter() - start
    examples = [
        {
            "task": task,
            "index": a.index,
            "output": a.output,
            "prediction": a.prediction,
            "answer": a.answer,
            "acc": float(a.correct),
            "parsed": a.parsed,
        }
        for a in answers
    ]
    return TaskResult(
        task=task,
        protocol="llm-adapters",
        metrics=[
            _metric("acc", [float(a.correct) for a in answers]),
            _metric("unparsed", [float(not a.parsed) for a in answers]),
        ],
        seconds=seconds,
        data=_file_record(path),
        examples=examples,
        bos=config.add_bos,
        details={"num_beams": config.generation.num_beams, "max_new_tokens": config.generation.max_new_tokens},
    )


def run_lm_eval_task(scorer: LoglikelihoodScorer, task: str, path: Path | None, config: EvalConfig) -> TaskResult:
    """One built-in lm-eval task from a local file in the Hub schema, or from the Hub when ``path`` is None."""
    spec = LM_EVAL_TASKS[task]
    if path is None:
        rows, fingerprint = load_hub_rows(spec, config.limit)
        path_name, name, split = spec.dataset
        data = [{"dataset": f"{path_name}{'/' + name if name else ''}:{split}", "fingerprint": fingerprint}]
    else:
        rows = read_rows(path)[: config.limit]
        data = _file_record(path)
    questions = [lmeval_question(spec, row, i) for i, row in enumerate(rows)]
    return score_task(scorer, questions, protocol="lm-eval", metrics=spec.metrics, data=data, bos=config.add_bos)


def run_mc(scorer: LoglikelihoodScorer, task: str, path: Path, config: EvalConfig) -> TaskResult:
    """A generic local multiple-choice file."""
    rows = read_rows(path)[: config.limit]
    questions = [mc_question(row, i, task, config.mc_format) for i, row in enumerate(rows)]
    result = score_task(
        scorer, questions, protocol="mc", metrics=("acc", "acc_norm"), data=_file_record(path), bos=config.add_bos
    )
    result.details.update(template=config.mc_format.template, target_delimiter=config.mc_format.target_delimiter)
    return result
