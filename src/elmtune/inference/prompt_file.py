"""Batch mode's files: a JSONL of prompts in, a JSONL of replies out.

Each input line is a JSON object with either ``prompt`` (a user turn, or the whole text in raw mode; an optional
``system`` turn goes before it) or ``messages`` (a conversation of ``{"role", "content"}`` turns ending with a user
turn). Each output line is the input object with ``reply`` added, in the input order. A row that is not such an
object is a one-line error naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import Message
from elmtune.datasets.records import read_records
from elmtune.inference.prompts import Prompt

REPLY_FIELD = "reply"
"""The field each output row gets."""


@dataclass(frozen=True)
class PromptRow:
    """One input row.

    Attributes:
        fields: The row as read; the output row is these fields plus ``reply``.
        prompt: What to reply to.
        where: ``"prompts.jsonl, line 3"``.
    """

    fields: dict[str, Any]
    prompt: Prompt
    where: str


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("'messages' must be a non-empty list of {role, content} turns")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or set(turn) - {"role", "content"} or {"role", "content"} - set(turn):
            raise ValueError("each turn of 'messages' must be an object with exactly 'role' and 'content'")
        turns.append(Message(turn["role"], turn["content"]))
    return tuple(turns)


def _prompt(row: Any, *, system: str | None, raw: bool) -> Prompt:
    """The prompt of one parsed row; ValueError/TypeError say what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object with 'prompt' or 'messages', got {type(row).__name__}")
    if ("prompt" in row) == ("messages" in row):
        raise ValueError("give exactly one of 'prompt' (text) and 'messages' (a conversation)")
    if REPLY_FIELD in row:
        raise ValueError(f"the row already has a '{REPLY_FIELD}' field")
    row_system = row.get("system", system)
    if row_system is not None and not isinstance(row_system, str):
        raise ValueError("'system' must be a string")
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise ValueError("'prompt' must be a string")
        if raw and "system" in row:
            raise ValueError("'system' needs the chat format, which raw mode leaves out")
        return Prompt.from_text(row["prompt"], system=row_system, raw=raw)
    if raw:
        raise ValueError("'messages' needs the chat format, which raw mode leaves out; give 'prompt'")
    messages = _messages(row["messages"])
    if row_system is not None and messages[0].role != "system":
        messages = (Message("system", row_system), *messages)
    return Prompt(messages=messages)


def read_prompt_rows(path: str | Path, *, system: str | None = None, raw: bool = False) -> list[PromptRow]:
    """Read and check every row of a prompts file before anything is generated.

    Args:
        path: The JSONL file.
        system: A system turn for rows that give none (chat format only).
        raw: Feed each ``prompt`` as it is, without the chat format.

    Returns:
        The rows, in file order.

    Raises:
        DataSourceError: The file is missing or not UTF-8.
        DataRowError: A row is not valid JSON or not a prompt (``"prompts.jsonl, line 3: ..."``).
    """
    rows = []
    for record in read_records(Path(path)):
        if record.error is not None:
            raise DataRowError(record.where, record.error)
        try:
            prompt = _prompt(record.value, system=system, raw=raw)
        except (ValueError, TypeError) as err:
            raise DataRowError(record.where, str(err)) from None
        rows.append(PromptRow(dict(record.value), prompt, record.where))
    if not rows:
        raise DataRowError(str(path), "no prompts (the file is empty)")
    return rows


def reply_lines(rows: Sequence[PromptRow], replies: Sequence[str]) -> str:
    """The output file's text: each row's fields plus ``reply``, one JSON object per line."""
    lines = [
        json.dumps({**row.fields, REPLY_FIELD: reply}, ensure_ascii=False)
        for row, reply in zip(rows, replies, strict=True)
    ]
    return "".join(line + "\n" for line in lines)


__all__ = ["REPLY_FIELD", "PromptRow", "read_prompt_rows", "reply_lines"]
