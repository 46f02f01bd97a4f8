"""Row formats: detection from a row's fields, and validation of one row into a typed example.

| format                  | fields                                                            | example type       |
| ----------------------- | ----------------------------------------------------------------- | ------------------ |
| ``alpaca``              | ``instruction``, ``output``, optional ``input``                   | InstructionExample |
| ``commonsense``         | ``instruction``, ``input``, ``output``, ``answer``                | InstructionExample |
| ``messages``            | ``messages``: list of ``{role, content}``                         | ChatExample        |
| ``prompt_completion``   | ``prompt``, ``completion``                                        | CompletionExample  |
| ``text``                | ``text``                                                          | TextExample        |
| ``preference``          | ``chosen``, ``rejected`` (strings or message lists), ``prompt``   | PreferenceExample  |
| ``sharegpt_preference`` | ``conversations``, ``chosen``, ``rejected`` (``{from, value}``)   | PreferenceExample  |
| ``alpaca_preference``   | ``instruction``, ``chosen``, ``rejected``, optional ``input``     | PreferenceExample  |
| ``ultrafeedback_raw``   | ``instruction``, ``completions`` with per-aspect ratings          | PreferenceExample  |

``sharegpt_preference`` and ``alpaca_preference`` are LLaMA-Factory's pairwise layouts (optional ``system``, and
``history`` for the Alpaca one), read by :mod:`elmtune.datasets.llamafactory`; ``ultrafeedback_raw`` is
openbmb/UltraFeedback, binarised while loading by :mod:`elmtune.datasets.ultrafeedback`. A preference row with an
empty prompt or reply is skipped and counted (:mod:`elmtune.datasets.pair_drops`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import (
    ROLES,
    ChatExample,
    CompletionExample,
    InstructionExample,
    Message,
    PreferenceExample,
    SFTExample,
    TextExample,
)
from elmtune.datasets.pair_drops import require_sides

DataFormat = Literal[
    "alpaca",
    "commonsense",
    "messages",
    "prompt_completion",
    "text",
    "preference",
    "sharegpt_preference",
    "alpaca_preference",
    "ultrafeedback_raw",
]
FORMATS: tuple[str, ...] = get_args(DataFormat)
PREFERENCE_FORMATS: tuple[str, ...] = ("preference", "sharegpt_preference", "alpaca_preference", "ultrafeedback_raw")
SFT_FORMATS: tuple[str, ...] = tuple(f for f in FORMATS if f not in PREFERENCE_FORMATS)


def detect_format(row: Any) -> DataFormat | None:
    """The format a row's field names indicate, or ``None`` if they fit none.

    Preference fields win over chat fields (UltraFeedback rows carry ``messages`` too), commonsense over alpaca.
    Among preference rows, ``conversations`` marks LLaMA-Factory's ShareGPT layout and ``instruction`` without
    ``prompt`` its Alpaca layout; ``instruction`` with ``completions`` is raw UltraFeedback.
    """
    if not isinstance(row, Mapping):
        return None
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        if "conversations" in keys:
            return "sharegpt_preference"
        if "instruction" in keys and "prompt" not in keys:
            return "alpaca_preference"
        return "preference"
    if {"instruction", "completions"} <= keys:
        return "ultrafeedback_raw"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output", "answer"} <= keys:
        return "commonsense"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type for messages (``null``, ``str``, ``int``, ``list``...)."""
    return "null" if value is None else type(value).__name__


def string_field(row: Mapping, name: str, where: str, *, required: bool = True, allow_empty: bool = False) -> str:
    """A string field, checked for presence, type and (unless allowed) emptiness."""
    if name not in row or row[name] is None:
        if required:
            raise DataRowError(where, f"field '{name}' is missing")
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise DataRowError(where, f"field '{name}' must be a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise DataRowError(where, f"field '{name}' is empty")
    return value


def row_mapping(row: Any, where: str) -> Mapping:
    """The row itself when it is an object with named fields.

    Raises:
        DataRowError: For any other value.
    """
    if not isinstance(row, Mapping):
        raise DataRowError(where, f"expected an object with named fields, got {type_name(row)}")
    return row


def parse_messages(
    value: Any, where: str, field: str = "messages", *, allow_empty: bool = False
) -> tuple[Message, ...]:
    """Validate a chat list of ``{role, content}`` objects.

    Args:
        value: The field's value.
        where: The row's location, for messages.
        field: The field's name, for messages.
        allow_empty: Accept blank contents (preference rows skip and count them instead of raising).

    Raises:
        DataRowError: Not a non-empty list; an item without a string ``role``/``content``; an unknown role; a
            system turn after the first position; an empty content (unless ``allow_empty``).
    """
    if value is None:
        raise DataRowError(where, f"field '{field}' is missing")
    if not isinstance(value, list | tuple):
        raise DataRowError(where, f"field '{field}' must be a list of messages, got {type_name(value)}")
    if not value:
        raise DataRowError(where, f"field '{field}' is an empty list")
    messages = []
    for i, item in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise DataRowError(where, f"{name} must be an object with 'role' and 'content', got {type_name(item)}")
        role = item.get("role")
        if role is None:
            raise DataRowError(where, f"{name} has no 'role'")
        if not isinstance(role, str):
            raise DataRowError(where, f"{name}.role must be a string, got {type_name(role)}")
        if role not in ROLES:
            raise DataRowError(where, f"{name} has role {role!r}; expected one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise DataRowError(where, f"{name} is a system turn after the first position")
        if "content" not in item or item["content"] is None:
            raise DataRowError(where, f"{name} has no 'content'")
        content = item["content"]
        if not isinstance(content, str):
            raise DataRowError(where, f"{name}.content must be a string, got {type_name(content)}")
        if not allow_empty and not content.strip():
            raise DataRowError(where, f"{name}.content is empty")
        messages.append(Message(role, content))
    return tuple(messages)


def parse_sft_row(row: Any, data_format: str, where: str) -> SFTExample:
    """Validate one row of a supervised fine-tuning format.

    Args:
        row: The raw row (a mapping).
        data_format: One of :data:`SFT_FORMATS`.
        where: The row's location, used in error messages and kept on the example.

    Returns:
        The typed example.

    Raises:
        DataRowError: A missing field, a wrong type or an empty text, naming the field.
    """
    row = row_mapping(row, where)
    if data_format in ("alpaca", "commonsense"):
        commonsense = data_format == "commonsense"
        return InstructionExample(
            instruction=string_field(row, "instruction", where),
            input=string_field(row, "input", where, required=commonsense, allow_empty=True),
            output=string_field(row, "output", where),
            answer=string_field(row, "answer", where) if commonsense else None,
            where=where,
        )
    if data_format == "messages":
        messages = parse_messages(row.get("messages"), where)
        if not any(m.role == "assistant" for m in messages):
            raise DataRowError(where, "field 'messages' has no assistant turn to train on")
        return ChatExample(messages, where=where)
    if data_format == "prompt_completion":
        return CompletionExample(
            prompt=string_field(row, "prompt", where, allow_empty=True),
            completion=string_field(row, "completion", where),
            where=where,
        )
    if data_format == "text":
        return TextExample(string_field(row, "text", where), where=where)
    raise ValueError(f"unknown SFT format {data_format!r}; use one of {', '.join(SFT_FORMATS)}")


def _score(row: Mapping, name: str, where: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataRowError(where, f"field '{name}' must be a number, got {type_name(value)}")
    return float(value)


def _reply(value: Any, where: str, field: str) -> tuple[tuple[Message, ...], str]:
    """``(turns before the reply, reply text)`` of a ``chosen``/``rejected`` field (string or message list)."""
    if isinstance(value, str):
        return (), value
    if value is None:
        raise DataRowError(where, f"field '{field}' is missing")
    if not isinstance(value, list | tuple):
        raise DataRowError(where, f"field '{field}' must be a string or a list of messages, got {type_name(value)}")
    messages = parse_messages(value, where, field, allow_empty=True)
    if messages[-1].role != "assistant":
        raise DataRowError(where, f"the last turn of '{field}' must be an assistant turn, got {messages[-1].role!r}")
    return messages[:-1], messages[-1].content


def parse_preference_row(row: Any, where: str) -> PreferenceExample:
    """Validate one preference row.

    Accepted layouts: HuggingFaceH4/ultrafeedback_binarized (``chosen``/``rejected`` are full conversations that share
    every turn but the last; ``prompt`` is then ignored), TRL's explicit-prompt layout (``prompt`` as a string or a
    message list, ``chosen``/``rejected`` as strings or one-turn assistant lists), and plain strings.

    Raises:
        DataRowError: A missing or mistyped field, conversations that differ before the last turn, or a prompt that
            does not end with a user turn.
        SkippedPair: An empty prompt turn or reply (the loader counts and skips the row).
    """
    row = row_mapping(row, where)
    chosen_context, chosen = _reply(row.get("chosen"), where, "chosen")
    rejected_context, rejected = _reply(row.get("rejected"), where, "rejected")
    if chosen_context or rejected_context:
        if chosen_context != rejected_context:
            raise DataRowError(where, "'chosen' and 'rejected' differ before their last turn")
        prompt = chosen_context
    else:
        raw = row.get("prompt")
        if isinstance(raw, list | tuple):
            prompt = parse_messages(raw, where, "prompt", allow_empty=True)
        else:
            prompt = (Message("user", string_field(row, "prompt", where, allow_empty=True)),)
    if prompt[-1].role != "user":
        raise DataRowError(where, f"the prompt must end with a user turn, got {prompt[-1].role!r}")
    example = PreferenceExample(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        score_chosen=_score(row, "score_chosen", where),
        score_rejected=_score(row, "score_rejected", where),
        where=where,
    )
    return require_sides(example)
