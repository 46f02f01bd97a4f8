r"""The log-likelihood protocols ``apple`` and ``mc``: prompts, questions, and a task's ``acc`` / ``acc_norm``.

Apple's protocol (CoreNet ``main_eval_llmadapters.py``, spec 7.9): the context is the **training prompt** with an empty
response (:func:`~elmtune.datasets.templates.alpaca_prompt`: Alpaca with LLM-Adapters' 16-space indentation, two
trailing spaces after the no-input preamble); each candidate ``c`` parsed from the instruction's "Answer format" line is
scored as the continuation ``the correct answer is {c}``; ``acc`` takes the largest summed log-likelihood, ``acc_norm``
the largest sum divided by the character length of that continuation string. lm-eval's tokenisation moves the
context's trailing newline and 16 spaces to the front of every continuation, so they are scored too (but not counted by
``acc_norm``). LLM-Adapters' generation protocol uses a different prompt, the **evaluation prompt**
(:mod:`elmtune.evaluation.generation`); both come from :mod:`elmtune.datasets.templates`, the one source of prompt text
for training and evaluation.

Generic local multiple-choice files (``mc``) are scored as an lm-eval ``multiple_choice`` task with the same settings
would be. A row has ``query`` (or ``context``), ``choices`` (a list of strings) and ``gold`` (an index). The context is
the query itself, or a Jinja template rendered with the row (lm-eval's ``doc_to_text`` syntax, e.g. ``"Question:
{{query}}\nAnswer:"``); each continuation is ``target_delimiter + choice``. Rows with ``context_options`` (a list),
``continuation`` and ``gold`` (the MosaicML schema of WinoGrande-style tasks) are scored by partial scoring: one context
per option, the continuation shared.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elmtune.datasets.templates import alpaca_prompt
from elmtune.errors import ElmtuneError
from elmtune.evaluation.config import APPLE_SEED, EvalConfig, MCFormat, template_environment
from elmtune.evaluation.data import ChoiceScore, DataError, Question, file_provenance, load_rows, read_rows
from elmtune.evaluation.report import TaskResult, mean_metric, predict
from elmtune.evaluation.scoring import LoglikelihoodScorer

LLM_ADAPTERS_TASKS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Challenge",
    "ARC-Easy",
    "openbookqa",
)
"""The eight tasks, named as LLM-Adapters' ``dataset/<task>/test.json`` directories."""

TASK_ALIASES: dict[str, str] = {
    **{task.lower(): task for task in LLM_ADAPTERS_TASKS},
    "arc_easy": "ARC-Easy",
    "arc-e": "ARC-Easy",
    "arc_challenge": "ARC-Challenge",
    "arc-c": "ARC-Challenge",
    "social_iqa": "social_i_qa",
    "siqa": "social_i_qa",
    "obqa": "openbookqa",
}
"""Lower-case names (LLM-Adapters' and lm-eval's) -> LLM-Adapters task name."""

ANSWER_WORDS = ("answer", "ending", "option", "solution")
"""Words whose numbered forms (``answer1`` ...) are LLM-Adapters' answer labels; true/false is the other label set."""


def parse_candidates(instruction: str) -> list[str]:
    """Answer candidates from the instruction's last line, as Apple's multiple-choice evaluation reads them.

    "Answer format: true/false" gives ``["true", "false"]``; a last line ending in ``answerN`` (or ending, option,
    solution) gives ``["answer1", ..., "answerN"]``.

    Raises:
        ElmtuneError: The last line has no recognisable answer format.
    """
    last_line = instruction.split("\n")[-1]
    if re.match(r".*Answer format: true/false", last_line):
        return ["true", "false"]
    candidates: list[str] = []
    for word in ANSWER_WORDS:
        match = re.match(rf".*Answer format: .*{word}(\d)$", last_line)
        if match:
            candidates = [f"{word}{n}" for n in range(1, int(match.group(1)) + 1)]
    if not candidates:
        raise ElmtuneError(f"no 'Answer format: ...' line ends this instruction: {last_line[-80:]!r}")
    return candidates


def apple_subset(rows: list[dict[str, Any]], limit: int | None, seed: int = APPLE_SEED) -> list[dict[str, Any]]:
    """Apple's subset: without a limit all rows in file order; with one, shuffle with ``seed`` and keep ``limit``."""
    if limit is None:
        return list(rows)
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:limit]


def apple_continuation(candidate: str) -> str:
    """The continuation Apple's protocol scores for one candidate."""
    return f"the correct answer is {candidate}"


def apple_question(row: dict[str, Any], task: str) -> Question:
    """One LLM-Adapters row as Apple's multiple-choice question.

    Raises:
        DataError: The instruction has no answer format, or the answer is not among its candidates.
    """
    try:
        candidates = parse_candidates(row["instruction"])
    except Exception as error:
        raise DataError(f"{task} row {row.get('_index', 0) + 1}: {error}") from None
    if row["answer"] not in candidates:
        raise DataError(f"{task} row {row.get('_index', 0) + 1}: answer {row['answer']!r} is not one of {candidates}")
    context = alpaca_prompt(row["instruction"], row.get("input", "") or "")
    conts = [apple_continuation(c) for c in candidates]
    return Question(
        task=task,
        index=row.get("_index", 0),
        requests=tuple((context, cont) for cont in conts),
        gold=candidates.index(row["answer"]),
        labels=tuple(candidates),
        norm_lengths=tuple(len(cont) for cont in conts),
    )


def _mc_context(row: dict[str, Any], fmt: MCFormat, where: str) -> str:
    if fmt.template is not None:
        from jinja2 import UndefinedError

        try:
            return template_environment().from_string(fmt.template).render(**row)
        except UndefinedError as error:
            raise DataError(f"{where}: the prompt template uses a missing field ({error.message})") from None
    for key in ("query", "context"):
        if key in row:
            return str(row[key])
    raise DataError(f"{where}: needs 'query' or 'context' (or pass a prompt template)")


def mc_question(row: dict[str, Any], index: int, task: str, fmt: MCFormat) -> Question:
    """One generic multiple-choice row as a question.

    Raises:
        DataError: Missing fields, an empty choice list, or a gold index out of range.
    """
    where = f"{task} row {index + 1}"  # 1-based, as in every message
    if "gold" not in row:
        raise DataError(f"{where}: needs 'gold' (the index of the correct choice)")
    gold = int(row["gold"])
    if "context_options" in row:
        contexts = [str(c) for c in row["context_options"]]
        if "continuation" not in row or not contexts:
            raise DataError(f"{where}: 'context_options' needs a non-empty list and a 'continuation'")
        continuation = fmt.target_delimiter + str(row["continuation"])
        requests = tuple((context, continuation) for context in contexts)
        labels = tuple(contexts)
    else:
        choices = row.get("choices")
        if not isinstance(choices, list) or not choices:
            raise DataError(f"{where}: needs 'choices', a non-empty list of strings")
        context = _mc_context(row, fmt, where)
        requests = tuple((context, fmt.target_delimiter + str(choice)) for choice in choices)
        labels = tuple(str(choice) for choice in choices)
    if not 0 <= gold < len(requests):
        raise DataError(f"{where}: gold {gold} is not an index of its {len(requests)} choices")
    return Question(
        task=task,
        index=index,
        requests=requests,
        gold=gold,
        labels=labels,
        norm_lengths=tuple(len(label) for label in labels),
    )


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
        metrics=[mean_metric(name, columns[name]) for name in metrics],
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
        scorer, questions, protocol="apple", metrics=("acc", "acc_norm"), data=file_provenance(path), bos=config.add_bos
    )


def run_mc(scorer: LoglikelihoodScorer, task: str, path: Path, config: EvalConfig) -> TaskResult:
    """A generic local multiple-choice file."""
    rows = read_rows(path)[: config.limit]
    questions = [mc_question(row, i, task, config.mc_format) for i, row in enumerate(rows)]
    result = score_task(
        scorer, questions, protocol="mc", metrics=("acc", "acc_norm"), data=file_provenance(path), bos=config.add_bos
    )
    result.details.update(template=config.mc_format.template, target_delimiter=config.mc_format.target_delimiter)
    return result
