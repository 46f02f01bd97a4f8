r"""Prompts in OpenELM-Instruct's chat format, rendered and tokenised exactly as a ``chat``-template run trains.

A conversation that ends with a user turn is rendered with Apple's Jinja template
(:data:`~elmtune.datasets.templates.OPENELM_INSTRUCT_CHAT_TEMPLATE`) and ``add_generation_prompt``:
``<|system|>\n{system}</s>\n<|user|>\n{message}</s>\n<|assistant|>\n``, the prompt part of what SFT and DPO runs
on the ``chat`` template train on. The model's reply then ends with EOS. A raw prompt is fed as it is.

Tokenisation follows the training contract: ``[BOS] + tokenizer(text, add_special_tokens=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elmtune.datasets.examples import Message
from elmtune.datasets.templates import OPENELM_INSTRUCT_CHAT_TEMPLATE


@dataclass(frozen=True)
class Prompt:
    """What the model replies to: a conversation in the chat format, or raw text.

    Attributes:
        messages: The conversation so far, ending with a user turn (empty for a raw prompt).
        raw_text: Text fed as it is, without the chat format (None for a conversation).
    """

    messages: tuple[Message, ...] = ()
    raw_text: str | None = None

    def __post_init__(self) -> None:
        if (self.raw_text is None) == (not self.messages):
            raise ValueError("a prompt is either a conversation or raw text")
        if self.messages and self.messages[-1].role != "user":
            raise ValueError("a conversation to reply to must end with a user turn")

    @classmethod
    def from_text(cls, text: str, *, system: str | None = None, raw: bool = False) -> Prompt:
        """A single user turn (after an optional system turn), or ``text`` as it is when ``raw``."""
        if raw:
            return cls(raw_text=text)
        turns = (Message("system", system),) if system is not None else ()
        return cls(messages=(*turns, Message("user", text)))

    def render(self, tokenizer: Any) -> str:
        """The prompt text: the chat format with the assistant header it ends in, or the raw text."""
        if self.raw_text is not None:
            return self.raw_text
        return chat_prompt_text(self.messages, tokenizer)


def chat_prompt_text(messages: Sequence[Message], tokenizer: Any) -> str:
    r"""Render a conversation in OpenELM-Instruct's format, ending with ``<|assistant|>\n``.

    Args:
        messages: The turns so far; the last one is the user's.
        tokenizer: A transformers tokenizer; its EOS text ends every turn.

    Returns:
        The text (no BOS): what transformers renders from Apple's template with ``add_generation_prompt=True``.
    """
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(
        conversation, chat_template=OPENELM_INSTRUCT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt text as training tokenises it: BOS, then the text without special tokens added."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])


__all__ = ["Prompt", "chat_prompt_text", "encode_prompt"]
