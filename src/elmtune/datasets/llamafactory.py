"""LLaMA-Factory's pairwise (DPO) rows, in its ShareGPT and Alpaca layouts, as typed preference pairs.

ShareGPT layout (``sharegpt_preference``), e.g. LLaMA-Factory's ``data/dpo_en_demo.json``::

    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", ...}],
     "chosen": {"from": "gpt", "value": "..."}, "rejected": {"from": "gpt", "value": "..."}, "system": "optional"}

The conversation is the prompt: an optional ``system`` turn first, then ``human`` and ``gpt`` turns alternating and
ending with ``human`` (roles become ``system``, ``user``, ``assistant``). A system turn inside the conversation wins
over the top-level ``system`` field, as in LLaMA-Factory; a blank system prompt is left out. Tool turns
(``function_call``, ``observation``) are refused.

Alpaca layout (``alpaca_preference``)::

    {"instruction": "...", "input": "optional", "chosen": "...", "rejected": "...", "system": "optional",
     "history": [["earlier question", "earlier answer"], ...]}

The user turn is ``instruction`` and ``input`` joined by a newline (either may be empty), after the ``history``
turns, as LLaMA-Factory builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import Message, PreferenceExample
from elmtune.datasets.formats import row_mapping, string_field, type_name
from elmtune.datasets.pair_drops import require_sides

SHAREGPT_ROLES: dict[str, str] = {"system": "system", "human": "user", "gpt": "assistant"}
"""ShareGPT ``from`` values and the roles they become."""
TOOL_ROLES: tuple[str, ...] = ("function_call", "observation")
"""ShareGPT ``from`` values of tool use, which preference pairs do not support."""


def _sharegpt_turn(item: Any, where: str, name: str) -> tuple[str, str]:
    """``(from, value)`` of one ShareGPT turn, with a supported ``from``.

    Raises:
        DataRowError: Not an object with string ``from`` and ``value``, or a tool or unknown role.
    """
    if not isinstance(item, Mapping):
        raise DataRowError(where, f"{name} must be an object with 'from' and 'value', got {type_name(item)}")
    speaker, value = item.get("from"), item.get("value")
    if not isinstance(speaker, str):
        raise DataRowError(where, f"{name}.from must be a string, got {type_name(speaker)}")
    if speaker in TOOL_ROLES:
        raise DataRowError(where, f"{name} is a '{speaker}' turn; tool turns are not supported in preference pairs")
    if speaker not in SHAREGPT_ROLES:
        raise DataRowError(where, f"{name} is from {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
    if not isinstance(value, str):
        raise DataRowError(where, f"{name}.value must be a string, got {type_name(value)}")
    return speaker, value


def _conversation(value: Any, where: str) -> tuple[str | None, list[Message]]:
    """``(system text or None, user/assistant turns)`` of a ``conversations`` list.

    Raises:
        DataRowError: Not a non-empty list, a bad turn, a system turn after the first, turns that do not alternate
            ``human``, ``gpt``, ... or that do not end with ``human``.
    """
    if not isinstance(value, list | tuple):
        raise DataRowError(where, f"field 'conversations' must be a list of turns, got {type_name(value)}")
    system, turns = None, []
    for i, item in enumerate(value):
        name = f"conversations[{i}]"
        speaker, text = _sharegpt_turn(item, where, name)
        if speaker == "system":
            if i != 0:
                raise DataRowError(where, f"{name} is a system turn after the first position")
            system = text
            continue
        expected = "human" if len(turns) % 2 == 0 else "gpt"
        if speaker != expected:
            raise DataRowError(where, f"{name} is from {speaker!r} where a {expected!r} turn is expected")
        turns.append(Message(SHAREGPT_ROLES[speaker], text))
    if not turns or turns[-1].role != "user":
        raise DataRowError(where, "field 'conversations' must end with a 'human' turn (the prompt of the pair)")
    return system, turns


def _sharegpt_reply(row: Mapping, field: str, where: str) -> str:
    """The text of a ``chosen``/``rejected`` turn, which must come from ``gpt``.

    Raises:
        DataRowError: Missing, not a turn object, or not from ``gpt``.
    """
    if row.get(field) is None:
        raise DataRowError(where, f"field '{field}' is missing")
    speaker, text = _sharegpt_turn(row[field], where, field)
    if speaker != "gpt":
        raise DataRowError(where, f"field '{field}' is from {speaker!r}; the compared replies must be from 'gpt'")
    return text


def _with_system(system: str | None, turns: list[Message]) -> tuple[Message, ...]:
    """The prompt turns, after a system turn when ``system`` holds text."""
    head = (Message("system", system),) if system and system.strip() else ()
    return head + tuple(turns)


def parse_sharegpt_pair(row: Any, where: str) -> PreferenceExample:
    """Validate one LLaMA-Factory ShareGPT pairwise row into a pair (see the module docstring).

    Raises:
        DataRowError: A missing or mistyped field, an unsupported or misplaced role, naming the row and field.
        SkippedPair: An empty prompt turn or reply (the loader counts and skips the row).
    """
    row = row_mapping(row, where)
    if row.get("conversations") is None:
        raise DataRowError(where, "field 'conversations' is missing")
    system, turns = _conversation(row["conversations"], where)
    if system is None:
        system = string_field(row, "system", where, required=False, allow_empty=True)
    chosen = _sharegpt_reply(row, "chosen", where)
    rejected = _sharegpt_reply(row, "rejected", where)
    return require_sides(PreferenceExample(_with_system(system, turns), chosen, rejected, where=where))


def _history(value: Any, where: str) -> list[Message]:
    """The user/assistant turns of an Alpaca ``history`` list of ``[question, answer]`` pairs (``None``: none).

    Raises:
        DataRowError: Not a list of two-string lists.
    """
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise DataRowError(where, f"field 'history' must be a list of [question, answer] pairs, got {type_name(value)}")
    turns = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise DataRowError(where, f"history[{i}] must be a [question, answer] pair of strings")
        turns += [Message("user", pair[0]), Message("assistant", pair[1])]
    return turns


def parse_alpaca_pair(row: Any, where: str) -> PreferenceExample:
    """Validate one LLaMA-Factory Alpaca pairwise row into a pair (see the module docstring).

    Raises:
        DataRowError: A missing or mistyped field, naming the row and field.
        SkippedPair: An empty prompt (``instruction`` and ``input`` both empty, or an empty history turn) or reply.
    """
    row = row_mapping(row, where)
    instruction = string_field(row, "instruction", where, allow_empty=True)
    query = string_field(row, "input", where, required=False, allow_empty=True)
    system = string_field(row, "system", where, required=False, allow_empty=True)
    turns = _history(row.get("history"), where)
    turns.append(Message("user", "\n".join(part for part in (instruction, query) if part)))
    chosen = string_field(row, "chosen", where, allow_empty=True)
    rejected = string_field(row, "rejected", where, allow_empty=True)
    return require_sides(PreferenceExample(_with_system(system, turns), chosen, rejected, where=where))
