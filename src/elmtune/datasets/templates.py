r"""Prompt templates, and the one place that decides where EOS goes and which text is a training target.

Three templates render examples into text segments (each marked target or not):

- ``alpaca``: the LLM-Adapters / Apple CoreNet commonsense training prompt, byte for byte, including its
  16-space indentation and trailing spaces (spec section 7.2). Target: the output and EOS.
- ``chat``: OpenELM-Instruct's Zephyr-style format, ``<|role|>\\n{content}</s>\\n`` per turn (spec section 6), equal
  to rendering :data:`OPENELM_INSTRUCT_CHAT_TEMPLATE` with transformers. Targets: each assistant content and its EOS.
- ``plain``: text as is (``text`` rows; ``prompt`` + ``completion``). Target: the completion (or text) and EOS.

BOS is never part of the text: tokenisation adds it once at the start. EOS is written as the tokenizer's EOS text
(``</s>``) right after each target, which the tokenizer reads as the EOS id.

The evaluation side imports :func:`alpaca_prompt` (the training prompt with an empty response, the context of
Apple's multiple-choice scoring) and :func:`llm_adapters_eval_prompt` (LLM-Adapters' generation prompt).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from elmtune.datasets.examples import (
    ChatExample,
    CompletionExample,
    InstructionExample,
    Message,
    PreferenceExample,
    SFTExample,
    TextExample,
)

Template = Literal["auto", "alpaca", "chat", "plain"]
TEMPLATES: tuple[str, ...] = get_args(Template)
EOS_TEXT = "</s>"
"""Llama-2's EOS token text (id 2)."""

_INDENT = " " * 16
_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

OPENELM_INSTRUCT_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
"""The Jinja chat template of Apple's OpenELM-Instruct DPO recipe (CoreNet ``openelm-instruct.yaml``), verbatim."""


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the field is called input
    r"""The LLM-Adapters / CoreNet training prompt with an empty response.

    This is the context of Apple's multiple-choice scoring (spec 7.9): it ends with ``### Response:\\n`` and 16
    spaces. The full training text is ``alpaca_prompt(instruction, input) + output``.

    Args:
        instruction: The instruction; inner newlines are kept as they are (only its first line is indented).
        input: Optional context; any non-empty string selects the with-input variant, as in the original.

    Returns:
        The prompt text.
    """
    if input:
        return (
            f"{_PREAMBLE_WITH_INPUT} \n\n"
            f"{_INDENT}### Instruction:\n{_INDENT}{instruction}\n{_INDENT}\n"
            f"{_INDENT}### Input:\n{_INDENT}{input}\n{_INDENT}\n"
            f"{_INDENT}### Response:\n{_INDENT}"
        )
    return (
        f"{_PREAMBLE}  \n\n"
        f"{_INDENT}### Instruction:\n{_INDENT}{instruction}\n{_INDENT}\n"
        f"{_INDENT}### Response:\n{_INDENT}"
    )


def llm_adapters_eval_prompt(instruction: str, input: str = "") -> str:  # noqa: A002
    r"""LLM-Adapters' generation-evaluation prompt (``commonsense_evaluate.py``), not used for training.

    It differs from :func:`alpaca_prompt`: its separator lines are truly empty, the no-input preamble has one
    trailing space and the with-input preamble none. It ends after ``### Response:\\n`` and 16 spaces.
    """
    if input:
        return (
            f"{_PREAMBLE_WITH_INPUT}\n\n"
            f"{_INDENT}### Instruction:\n{_INDENT}{instruction}\n\n"
            f"{_INDENT}### Input:\n{_INDENT}{input}\n\n"
            f"{_INDENT}### Response:\n{_INDENT}"
        )
    return f"{_PREAMBLE} \n\n{_INDENT}### Instruction:\n{_INDENT}{instruction}\n\n{_INDENT}### Response:\n{_INDENT}"


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text.

    Attributes:
        text: The text.
        target: Whether its tokens are training targets (by default, i.e. without ``train_on_prompt``).
    """

    text: str
    target: bool


@dataclass(frozen=True)
class Rendered:
    """An example rendered to text, as consecutive segments."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The full text (no BOS)."""
        return "".join(s.text for s in self.segments)

    def target_spans(self) -> list[tuple[int, int]]:
        """Character ranges ``[start, end)`` of the target segments in :attr:`text`."""
        spans, pos = [], 0
        for segment in self.segments:
            if segment.target and segment.text:
                spans.append((pos, pos + len(segment.text)))
            pos += len(segment.text)
        return spans


def _joined(segments: Sequence[Segment]) -> Rendered:
    """Merge neighbours with the same flag and drop empty pieces."""
    merged: list[Segment] = []
    for segment in segments:
        if not segment.text:
            continue
        if merged and merged[-1].target == segment.target:
            merged[-1] = Segment(merged[-1].text + segment.text, segment.target)
        else:
            merged.append(segment)
    return Rendered(tuple(merged))


def _chat_segments(messages: Iterable[Message], eos_token: str) -> list[Segment]:
    segments = []
    for m in messages:
        if m.role == "assistant":
            segments += [Segment("<|assistant|>\n", False), Segment(m.content + eos_token, True), Segment("\n", False)]
        else:
            segments.append(Segment(f"<|{m.role}|>\n{m.content}{eos_token}\n", False))
    return segments


def _user_turn(example: InstructionExample | CompletionExample) -> str:
    if isinstance(example, CompletionExample):
        return example.prompt
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


def default_template(example: SFTExample | PreferenceExample) -> str:
    """The template ``auto`` picks.

    Alpaca for instruction rows, chat for conversations and preference pairs, plain for text and prompt/completion rows.
    """
    if isinstance(example, InstructionExample):
        return "alpaca"
    if isinstance(example, ChatExample | PreferenceExample):
        return "chat"
    return "plain"


def _unsupported(example: object, template: str) -> ValueError:
    return ValueError(f"the {template} template cannot render a {type(example).__name__}")


def render_sft(
    example: SFTExample, template: str = "auto", *, eos_token: str = EOS_TEXT, system_prompt: str | None = None
) -> Rendered:
    """Render a supervised example into target and non-target segments.

    Args:
        example: The example.
        template: ``auto`` (see :func:`default_template`), ``alpaca``, ``chat`` or ``plain``.
        eos_token: The EOS text written after each target.
        system_prompt: For the chat template: a system turn put first when the example has none.

    Returns:
        The segments; targets are responses (alpaca, plain) or every assistant turn (chat), each with its EOS.

    Raises:
        ValueError: An unknown template, or one that cannot render this kind of example.
    """
    if template == "auto":
        template = default_template(example)
    if template == "alpaca":
        if isinstance(example, InstructionExample):
            prompt, response = alpaca_prompt(example.instruction, example.input), example.output
        elif isinstance(example, CompletionExample):
            prompt, response = alpaca_prompt(example.prompt), example.completion
        else:
            raise _unsupported(example, template)
        return _joined([Segment(prompt, False), Segment(response + eos_token, True)])
    if template == "chat":
        if isinstance(example, ChatExample):
            messages = list(example.messages)
        elif isinstance(example, InstructionExample | CompletionExample):
            reply = example.output if isinstance(example, InstructionExample) else example.completion
            messages = [Message("user", _user_turn(example)), Message("assistant", reply)]
        else:
            raise _unsupported(example, template)
        if system_prompt is not None and messages[0].role != "system":
            messages.insert(0, Message("system", system_prompt))
        return _joined(_chat_segments(messages, eos_token))
    if template == "plain":
        if isinstance(example, TextExample):
            return _joined([Segment(example.text + eos_token, True)])
        if isinstance(example, CompletionExample):
            return _joined([Segment(example.prompt, False), Segment(example.completion + eos_token, True)])
        raise _unsupported(example, template)
    raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")


def render_preference(
    example: PreferenceExample, template: str = "auto", *, eos_token: str = EOS_TEXT
) -> tuple[Rendered, Rendered]:
    r"""Render prompt + chosen and prompt + rejected; the reply and its EOS are the targets.

    Args:
        example: The preference pair.
        template: ``auto``/``chat`` (the whole prompt conversation, then ``<|assistant|>\\n`` + reply), ``alpaca`` or
            ``plain`` (both need a prompt that is a single user turn).
        eos_token: The EOS text written after each reply.

    Returns:
        ``(chosen, rejected)`` renderings that share the same prompt text.

    Raises:
        ValueError: An unknown template, or a multi-turn prompt for ``alpaca``/``plain``.
    """
    if template in ("auto", "chat"):
        prompt = _chat_segments(example.prompt, eos_token) + [Segment("<|assistant|>\n", False)]
        tail = [Segment("\n", False)]
    elif template in ("alpaca", "plain"):
        if len(example.prompt) != 1:
            raise ValueError(f"the {template} template needs a single-turn prompt; use the chat template")
        text = example.prompt[0].content
        prompt = [Segment(alpaca_prompt(text) if template == "alpaca" else text, False)]
        tail = []
    else:
        raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    return (
        _joined([*prompt, Segment(example.chosen + eos_token, True), *tail]),
        _joined([*prompt, Segment(example.rejected + eos_token, True), *tail]),
    )
