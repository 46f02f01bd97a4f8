"""Preference rows that hold no usable pair: skipped at loading and counted, never silently kept.

A row is skipped, whatever its format, when its prompt or one of its replies is empty; a raw UltraFeedback row also
when fewer than two of its completions are usable or none is rated below the best. A pair whose chosen and rejected
replies are identical is dropped at tokenisation (``TokenizeReport.dropped_identical``), where truncation can make
two replies identical too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from elmtune.datasets.examples import PreferenceExample

DropReason = Literal["empty_prompt", "empty_reply", "no_lower_rated", "too_few_completions"]
"""Why a preference row was skipped."""

_LABELS: dict[str, str] = {
    "empty_prompt": "with an empty prompt",
    "empty_reply": "with an empty chosen or rejected reply",
    "no_lower_rated": "with no completion rated below the best",
    "too_few_completions": "with fewer than two usable completions",
}


class SkippedPair(Exception):  # noqa: N818 - a row that is skipped, not an error shown to users
    """A well-formed preference row without a usable pair; the loader counts it and goes on.

    Attributes:
        where: The row's location, e.g. ``"prefs.jsonl, line 7"``.
        reason: Why it holds no pair.
    """

    def __init__(self, where: str, reason: DropReason) -> None:
        super().__init__(f"{where}: skipped, {_LABELS[reason]}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class PairDrops:
    """Preference rows skipped while loading, by reason, and raw UltraFeedback completions left out.

    Attributes:
        empty_prompt: Rows whose prompt (or one of its turns) is empty.
        empty_reply: Rows whose chosen or rejected reply is empty.
        no_lower_rated: Raw UltraFeedback rows whose usable completions all tie with the best one.
        too_few_completions: Raw UltraFeedback rows with fewer than two usable completions.
        empty_responses: Raw UltraFeedback completions left out because their response is empty (completions, not
            rows).
        unrated_responses: Raw UltraFeedback completions with a response left out because every rating is ``N/A``
            (completions).
    """

    empty_prompt: int = 0
    empty_reply: int = 0
    no_lower_rated: int = 0
    too_few_completions: int = 0
    empty_responses: int = 0
    unrated_responses: int = 0

    @property
    def rows(self) -> int:
        """Rows skipped, all reasons together."""
        return sum(getattr(self, reason) for reason in _LABELS)

    def describe(self) -> str:
        """One phrase for the data report, e.g. ``"2 rows skipped (1 with an empty prompt, ...)"``; ``""`` if none."""
        parts = []
        if self.rows:
            counts = [(getattr(self, reason), label) for reason, label in _LABELS.items()]
            reasons = ", ".join(f"{count} {label}" for count, label in counts if count)
            parts.append(f"{self.rows} preference rows skipped ({reasons})")
        if self.empty_responses or self.unrated_responses:
            parts.append(
                f"{self.empty_responses + self.unrated_responses} completions left out ({self.empty_responses} empty, "
                f"{self.unrated_responses} with every rating N/A)"
            )
        return ", ".join(parts)


DROP_COUNTS: tuple[str, ...] = tuple(f.name for f in fields(PairDrops))
"""The names of the counts of :class:`PairDrops`."""


def require_sides(example: PreferenceExample) -> PreferenceExample:
    """The example itself when its prompt turns and both replies hold text.

    Raises:
        SkippedPair: ``empty_prompt`` when a prompt turn is blank, else ``empty_reply`` when a reply is blank.
    """
    if any(not message.content.strip() for message in example.prompt):
        raise SkippedPair(example.where, "empty_prompt")
    if not example.chosen.strip() or not example.rejected.strip():
        raise SkippedPair(example.where, "empty_reply")
    return example
