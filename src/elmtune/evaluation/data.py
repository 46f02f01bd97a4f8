"""Evaluation data: local files, task files, LLM-Adapters rows, and the typed questions every protocol produces.

Local JSON / JSON Lines files are read as rows, ``--data`` entries are mapped to task files, and each protocol turns
rows into multiple-choice :class:`Question` objects whose choices are scored as :class:`ChoiceScore` values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmtune.errors import ElmtuneError
from elmtune.file_digest import sha256_file

DATA_SUFFIXES = (".json", ".jsonl")
_SPLIT_STEMS = ("test", "validation", "valid", "val", "dev", "train")
_LLM_ADAPTERS_FIELDS = ("instruction", "answer")


class DataError(ElmtuneError):
    """An evaluation file is missing, unreadable or in the wrong schema."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as (context, continuation) requests, one request per choice.

    Attributes:
        task: Task name the question belongs to.
        index: Row of the question in its source file (before any shuffle).
        requests: ``(context, continuation)`` per choice. Usually one context shared by all choices; partial scoring
            (WinoGrande) has one context per choice and a shared continuation.
        gold: Index of the correct choice.
        labels: Printable label per choice (``answer2``, the choice text...), used in per-example output.
        norm_lengths: Character length per choice that ``acc_norm`` divides by.
        meta: Extra fields copied into the per-example output.
    """

    task: str
    index: int
    requests: tuple[tuple[str, str], ...]
    gold: int
    labels: tuple[str, ...]
    norm_lengths: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError(f"{self.task} row {self.index}: a question needs at least one choice")
        if not len(self.requests) == len(self.labels) == len(self.norm_lengths):
            raise ValueError(f"{self.task} row {self.index}: requests, labels and norm_lengths differ in length")
        if not 0 <= self.gold < len(self.requests):
            raise ValueError(f"{self.task} row {self.index}: gold {self.gold} is not a choice index")


@dataclass(frozen=True)
class ChoiceScore:
    """Log-likelihood of one continuation.

    Attributes:
        loglikelihood: Sum of the continuation tokens' log-probabilities (fp32).
        num_tokens: Number of continuation tokens scored.
        is_greedy: Whether every continuation token is the model's argmax.
    """

    loglikelihood: float
    num_tokens: int
    is_greedy: bool

    def __post_init__(self) -> None:
        if not math.isfinite(self.loglikelihood):
            from elmtune.models.finite import NonFiniteError

            raise NonFiniteError(
                f"a log-likelihood is {self.loglikelihood}: the model produced NaN or infinite logits, so no score "
                "can be computed; check the model and adapter weights (or evaluate in fp32)"
            )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON array file or a JSON Lines file.

    Raises:
        DataError: The file is missing or is neither format.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: byte {error.start} is not UTF-8; save the file as UTF-8") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON or JSON Lines ({error.msg} at line {error.lineno})") from None
    if not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: every row must be a JSON object")
    return rows


def _task_of(path: Path) -> str:
    return path.parent.name if path.stem.lower() in _SPLIT_STEMS else path.stem


def _files_in(directory: Path) -> dict[str, Path]:
    """``<task>/<split>.json[l]`` and ``<task>.json[l]`` in a directory (a split file in it counts as its own task)."""
    found: dict[str, Path] = {}
    for child in sorted(directory.iterdir()):
        if child.is_dir():
            for stem in _SPLIT_STEMS:
                candidates = [child / f"{stem}{suffix}" for suffix in DATA_SUFFIXES]
                hit = next((c for c in candidates if c.is_file()), None)
                if hit is not None:
                    found.setdefault(child.name, hit)
                    break
        elif child.suffix in DATA_SUFFIXES:
            found.setdefault(_task_of(child), child)
    return found


def resolve_data(entries: Iterable[str | Path]) -> dict[str, Path]:
    """Map ``--data`` entries to ``{task: file}``.

    An entry is a file (task = its stem, or its folder's name for ``test.json`` and other split names), ``TASK=FILE``,
    or a directory, which contributes ``<task>/test.json`` (LLM-Adapters layout; also other split names and
    ``.jsonl``) and ``<task>.json[l]`` files.

    Raises:
        DataError: An entry does not exist.
    """
    found: dict[str, Path] = {}
    for entry in entries:
        text = str(entry)
        name, path = text.split("=", 1) if "=" in text and not Path(text).exists() else (None, text)
        resolved = Path(path).expanduser()
        if not resolved.exists():
            raise DataError(f"--data {text}: no such file or directory")
        if resolved.is_dir():
            if name is not None:
                files = _files_in(resolved)
                if len(files) != 1:
                    raise DataError(f"--data {text}: TASK=DIR needs a directory with exactly one data file")
                found[name] = next(iter(files.values()))
                continue
            for task, file in _files_in(resolved).items():
                found.setdefault(task, file)
        else:
            found[name or _task_of(resolved)] = resolved
    return found


def pick_tasks(
    available: dict[str, Path], requested: Iterable[str] | None, canonical: dict[str, str], default: Iterable[str]
) -> dict[str, Path]:
    """Select the requested tasks (case-insensitive, with aliases) from the files found.

    Args:
        available: ``{task: file}`` from :func:`resolve_data`.
        requested: Task names the user asked for; None for every known task that has a file.
        canonical: Lower-case alias -> canonical task name.
        default: Canonical task names run when nothing is requested.

    Returns:
        ``{canonical task: file}`` in the requested (or default) order.

    Raises:
        DataError: A requested task has no file, or nothing at all was found.
    """
    by_name = {canonical.get(task.lower(), task): path for task, path in available.items()}
    if requested is None:
        chosen = {task: by_name[task] for task in default if task in by_name}
        if not chosen:
            known = ", ".join(default)
            raise DataError(f"no data files for any of {known}; found {', '.join(available) or 'nothing'}")
        return chosen
    chosen = {}
    for task in requested:
        name = canonical.get(task.lower(), task)
        if name not in by_name:
            raise DataError(f"no data file for task '{task}'; found {', '.join(available) or 'nothing'}")
        chosen[name] = by_name[name]
    return chosen


def load_rows(path: Path, task: str) -> list[dict[str, Any]]:
    """Rows of an LLM-Adapters test file, each tagged with its ``_index`` in the file.

    Raises:
        DataError: A row lacks ``instruction`` or ``answer``.
    """
    rows = read_rows(path)
    for i, row in enumerate(rows):
        missing = [key for key in _LLM_ADAPTERS_FIELDS if key not in row]
        if missing:
            raise DataError(f"{path} row {i + 1} ({task}): missing {', '.join(missing)}; is this an LLM-Adapters file?")
    return [{**row, "_index": i} for i, row in enumerate(rows)]


def file_provenance(path: Path) -> list[dict[str, str]]:
    """The provenance record of a local data file: its path and SHA-256."""
    return [{"path": str(path), "sha256": sha256_file(path)}]
