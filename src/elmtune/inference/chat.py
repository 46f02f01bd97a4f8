"""An interactive chat: a conversation kept turn by turn, rendered whole in OpenELM-Instruct's format every turn.

:class:`ChatSession` holds the history; :func:`run_chat` is the loop of ``elmtune chat`` with its input and output
passed in. Commands: ``/reset`` starts a new conversation (the system turn stays), ``/exit`` (or end of input, or
Ctrl-C at the prompt) ends the chat. Ctrl-C while a reply is generated drops that turn and keeps the chat going.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import PreTrainedModel

from elmtune.datasets.examples import Message
from elmtune.inference.generator import Reply, generate_reply
from elmtune.inference.loading import load_for_generation
from elmtune.inference.prompts import Prompt
from elmtune.inference.request import ModelSource
from elmtune.inference.settings import DecodingSettings

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"
USER_PROMPT = "user> "
ASSISTANT_PROMPT = "assistant> "


class ChatSession:
    """A conversation with a loaded model.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        settings: Decoding settings of every reply.
        system: A system turn that starts the conversation (kept across ``reset``).
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: Any, settings: DecodingSettings, system: str | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.system = system
        self.history: list[Message] = []
        self.reset()

    def reset(self) -> None:
        """Forget every turn but the system turn."""
        self.history = [Message("system", self.system)] if self.system is not None else []

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Send a user turn and return the reply; both join the history once the reply is complete.

        Args:
            text: The user's message.
            on_text: Called with each piece of the reply as it is generated.

        Returns:
            The reply.
        """
        turns = (*self.history, Message("user", text))
        reply = generate_reply(self.model, self.tokenizer, Prompt(messages=turns), self.settings, on_text)
        self.history = [*turns, Message("assistant", reply.text)]
        return reply


def run_chat(
    source: ModelSource,
    settings: DecodingSettings,
    *,
    read_line: Callable[[str], str],
    write: Callable[[str], None],
    system: str | None = None,
) -> int:
    """Load ``source`` and chat until ``/exit``, end of input or Ctrl-C at the prompt.

    Args:
        source: The model.
        settings: Decoding settings of every reply.
        read_line: Shows its argument as a prompt and returns the next line; raises ``EOFError`` at end of input.
        write: Prints text as it is (replies are streamed through it piece by piece).
        system: A system turn that starts every conversation.

    Returns:
        The number of replies given.
    """
    model, tokenizer = load_for_generation(source)
    session = ChatSession(model, tokenizer, settings, system)
    write(f"chatting with {source.model}: {RESET_COMMAND} starts over, {EXIT_COMMANDS[0]} (or Ctrl-D) quits\n")
    replies = 0
    while True:
        try:
            line = read_line(USER_PROMPT)
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return replies
        command = line.strip()
        if command in EXIT_COMMANDS:
            return replies
        if command == RESET_COMMAND:
            session.reset()
            write("(new conversation)\n")
            continue
        if not command:
            continue
        write(ASSISTANT_PROMPT)
        try:
            session.reply(line, on_text=write)
        except KeyboardInterrupt:
            write("\n(reply interrupted; it is not part of the conversation)\n")
            continue
        replies += 1
        write("\n")


__all__ = ["ASSISTANT_PROMPT", "EXIT_COMMANDS", "RESET_COMMAND", "USER_PROMPT", "ChatSession", "run_chat"]
