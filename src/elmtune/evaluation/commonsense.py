"""The eight LLM-Adapters commonsense tasks: file rows, Apple's seeded subset, and Apple's multiple-choice questions.

Apple's protocol (CoreNet ``main_eval_llmadapters.py``, spec 7.9): the context is the training prompt with an empty
response; each candidate ``c`` parsed from the instruction's "Answer format" line is scored as the continuation
``the correct answer is {c}``; ``acc`` takes the largest summed log-likelihood, ``acc_norm`` the largest sum divided by
the character length of that continuation string. lm-eval's tokenisation moves the context's trailing newline and 16
spaces to the front of every continuation, so they are scored too (but not counted by ``acc_norm``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from elmtune.evaluation.data import DataError, read_rows
from elmtune.evaluation.items import Question
from elmtune.evaluation.prompts import alpaca_prompt, parse_candidates

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

APPLE_SEED = 83652
"""Seed of the shuffle Apple applies before ``limit`` (Python's ``random.seed`` + ``random.shuffle``)."""

_REQUIRED = ("instruction", "answer")


def load_rows(path: Path, task: str) -> list[dict[str, Any]]:
    """Rows of an LLM-Adapters test file, each tagged with its ``_index`` in the file.

    Raises:
        DataError: A row lacks ``instruction`` or ``answer``.
    """
    rows = read_rows(path)
    for i, row in enumerate(rows):
        missing = [key for key in _REQUIRED if key not in row]
        if missing:
            raise DataError(f"{path} row {i + 1} ({task}): missing {', '.join(missing)}; is this an LLM-Adapters file?")
    return [{**row, "_index": i} for i, row in enumerate(rows)]


def apple_subset(rows: list[dict[str, Any]], limit: int | None, seed: int = APPLE_SEED) -> list[dict[str, Any]]:
    """Apple's subset: without a limit all rows in file order; with one, shuffle with ``seed`` and keep ``limit``."""
    if limit is None:
        return list(rows)
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:limit]


def continuation(candidate: str) -> str:
    """The scored continuation for one candidate."""
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
    conts = [continuation(c) for c in candidates]
    return Question(
        task=task,
        index=row.get("_index", 0),
        requests=tuple((context, cont) for cont in conts),
        gold=candidates.index(row["answer"]),
        labels=tuple(candidates),
        norm_lengths=tuple(len(cont) for cont in conts),
    )
