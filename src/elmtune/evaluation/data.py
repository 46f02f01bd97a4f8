"""Local evaluation files: reading JSON / JSON Lines, hashing, and mapping ``--data`` entries to task files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from elmtune.errors import ElmtuneError

DATA_SUFFIXES = (".json", ".jsonl")
_SPLIT_STEMS = ("test", "validation", "valid", "val", "dev", "train")


class DataError(ElmtuneError):
    """An evaluation file is missing, unreadable or in the wrong schema."""


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
