"""Typed examples: what one validated row means, independent of the file it came from.

Supervised fine-tuning rows become one of four :data:`SFTExample` types; preference rows (DPO, hinge, IPO) become
:class:`PreferenceExample`. Each example keeps ``where`` (file and row) so later errors can still point at the row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass(frozen=True)
class Message:
    """One chat turn.

    Attributes:
        role: ``system``, ``user`` or ``assistant``.
        content: The turn's text.
    """

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class InstructionExample:
    """An Alpaca row (``instruction``/``input``/``output``) or an LLM-Adapters commonsense row (plus ``answer``).

    Attributes:
        instruction: The task; for commonsense rows it includes the options and the "Answer format" line.
        output: The target response (``"the correct answer is answer2"`` for commonsense rows).
        input: Optional context; ``""`` when absent (the template then uses its no-input variant).
        answer: The label of a commonsense row (``"answer2"``); ``None`` for Alpaca rows.
        where: The row's location in its source, for error messages.
    """

    instruction: str
    output: str
    input: str = ""
    answer: str | None = None
    where: str = ""

    def text_fields(self) -> Iterator[tuple[str, str]]:
        """``(field name, text)`` for every text the templates render."""
        yield "instruction", self.instruction
        yield "input", self.input
        yield "output", self.output


@dataclass(frozen=True)
class ChatExample:
    """A conversation; every assistant turn is a training target by default.

    Attributes:
        messages: The turns in order (a system turn, if any, comes first).
        where: The row's location in its source.
    """

    messages: tuple[Message, ...]
    where: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("a chat example needs at least one assistant turn")

    def text_fields(self) -> Iterator[tuple[str, str]]:
        """``(field name, text)`` for every text the templates render."""
        for i, message in enumerate(self.messages):
            yield f"messages[{i}].content", message.content


@dataclass(frozen=True)
class CompletionExample:
    """A prompt and its completion; the completion is the target.

    Attributes:
        prompt: Text the model is conditioned on (may be empty).
        completion: Text the model learns to produce.
        where: The row's location in its source.
    """

    prompt: str
    completion: str
    where: str = ""

    def text_fields(self) -> Iterator[tuple[str, str]]:
        """``(field name, text)`` for every text the templates render."""
        yield "prompt", self.prompt
        yield "completion", self.completion


@dataclass(frozen=True)
class TextExample:
    """Plain text; every token is a target (language modelling).

    Attributes:
        text: The document.
        where: The row's location in its source.
    """

    text: str
    where: str = ""

    def text_fields(self) -> Iterator[tuple[str, str]]:
        """``(field name, text)`` for every text the templates render."""
        yield "text", self.text


SFTExample = InstructionExample | ChatExample | CompletionExample | TextExample
"""Any supervised fine-tuning example."""


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt with a preferred and a dispreferred final assistant reply (DPO, hinge, IPO).

    Attributes:
        prompt: The conversation before the compared reply; it ends with a user turn.
        chosen: The preferred assistant reply.
        rejected: The dispreferred assistant reply.
        score_chosen: Rating of ``chosen`` when the source has one (UltraFeedback: 1-10), else ``None``.
        score_rejected: Rating of ``rejected`` when the source has one, else ``None``.
        where: The row's location in its source.
    """

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None
    where: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(self.prompt))
        if not self.prompt or self.prompt[-1].role != "user":
            raise ValueError("a preference prompt must end with a user turn")

    def text_fields(self) -> Iterator[tuple[str, str]]:
        """``(field name, text)`` for every text the templates render."""
        for i, message in enumerate(self.prompt):
            yield f"prompt[{i}].content", message.content
        yield "chosen", self.chosen
        yield "rejected", self.rejected
