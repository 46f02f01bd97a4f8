"""LLM-Adapters prompts, answer candidates and answer extraction for the commonsense protocols.

Two prompts are involved and must not be mixed up; both come from :mod:`elmtune.datasets.templates`, the one source of
prompt text for training and evaluation:

* :func:`alpaca_prompt`, the **training prompt** with an empty response (Alpaca with LLM-Adapters' 16-space
  indentation, two trailing spaces after the no-input preamble): the context of Apple's multiple-choice protocol;
* :func:`llm_adapters_eval_prompt`, the **evaluation prompt** of LLM-Adapters' generation protocol (truly empty
  separator lines, one trailing space after the no-input preamble), ending in ``### Response:\\n`` plus 16 spaces.
"""

from __future__ import annotations

import re

from elmtune.datasets.templates import alpaca_prompt, llm_adapters_eval_prompt
from elmtune.errors import ElmtuneError

__all__ = [
    "ANSWER_PATTERNS",
    "ANSWER_WORDS",
    "alpaca_prompt",
    "answer_pattern",
    "extract_answer",
    "llm_adapters_eval_prompt",
    "parse_candidates",
    "response_text",
]

ANSWER_WORDS = ("answer", "ending", "option", "solution")
"""Words whose numbered forms (``answer1`` ...) are LLM-Adapters' answer labels; true/false is the other label set."""


def parse_candidates(instruction: str) -> list[str]:
    """Answer candidates from the instruction's last line, as Apple's multiple-choice evaluation reads them.

    "Answer format: true/false" gives ``["true", "false"]``; a last line ending in ``answerN`` (or ending, option,
    solution) gives ``["answer1", ..., "answerN"]``.

    Raises:
        ElmtuneError: The last line has no recognisable answer format.
    """
    last_line = instruction.split("\n")[-1]
    if re.match(r".*Answer format: true/false", last_line):
        return ["true", "false"]
    candidates: list[str] = []
    for word in ANSWER_WORDS:
        match = re.match(rf".*Answer format: .*{word}(\d)$", last_line)
        if match:
            candidates = [f"{word}{n}" for n in range(1, int(match.group(1)) + 1)]
    if not candidates:
        raise ElmtuneError(f"no 'Answer format: ...' line ends this instruction: {last_line[-80:]!r}")
    return candidates


ANSWER_PATTERNS: dict[str, str] = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
"""LLM-Adapters' answer vocabulary per task (the regex its generation protocol searches)."""


def answer_pattern(task: str, candidates: list[str]) -> str:
    """The regex of ``task``'s answer vocabulary; other tasks use their parsed candidates."""
    return ANSWER_PATTERNS.get(task) or "|".join(re.escape(c) for c in sorted(candidates, key=len, reverse=True))


def extract_answer(generated: str, pattern: str) -> str:
    """The first hit of ``pattern`` in the generated text (stripped), or ``""`` when there is none."""
    hits = re.findall(pattern, generated.strip())
    return hits[0] if hits else ""


def response_text(decoded: str) -> str:
    """The text after the first ``### Response:`` marker of a decoded prompt + generation, stripped."""
    parts = decoded.split("### Response:")
    return parts[1].strip() if len(parts) > 1 else ""
