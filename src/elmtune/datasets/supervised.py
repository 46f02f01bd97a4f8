"""Supervised examples: their tokenisation settings, the tokenised example, and how the shared pipeline renders them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from elmtune.datasets.encoding import IGNORE_INDEX, Overlong, TruncationSide, truncate
from elmtune.datasets.examples import SFTExample
from elmtune.datasets.templates import Rendered, render_sft
from elmtune.datasets.tokenize_pipeline import Encoded, TokenizeReport, check_tokenize_choices, tokenize_examples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizeConfig:
    """How supervised examples become token ids and labels.

    Attributes:
        max_length: Longest sequence in tokens, BOS and EOS included.
        template: ``auto``, ``alpaca``, ``chat`` or ``plain`` (see :mod:`elmtune.datasets.templates`).
        train_on_prompt: Train on every token, prompt included (Apple's commonsense recipe); default: responses only
            (every assistant turn for chat).
        overlong: What to do with an example longer than ``max_length``: ``truncate`` it, ``drop`` it, or raise
            (``error``).
        truncation_side: ``right`` keeps the beginning; ``left`` keeps BOS and the end.
        system_prompt: Chat template only: a system turn put first in conversations that have none.
    """

    max_length: int = 2048
    template: str = "auto"
    train_on_prompt: bool = False
    overlong: Overlong = "truncate"
    truncation_side: TruncationSide = "right"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        check_tokenize_choices(self.template, self.overlong, "truncation_side", self.truncation_side)


@dataclass(frozen=True, eq=False)
class TokenizedExample:
    """One tokenised supervised example.

    Attributes:
        input_ids: (L,) int32 token ids, BOS first.
        labels: (L,) int32 targets aligned with ``input_ids``; -100 where there is no loss.
        where: The source row.
        truncated: Whether it was cut to ``max_length``.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    where: str = ""
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_targets(self) -> int:
        """Tokens that carry a loss."""
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class SFTRendering:
    """Supervised examples in :func:`tokenize_examples`: one text per example, cut on ``truncation_side``."""

    config: TokenizeConfig

    @property
    def max_length(self) -> int:
        """See :class:`TokenizeConfig`."""
        return self.config.max_length

    @property
    def overlong(self) -> Overlong:
        """See :class:`TokenizeConfig`."""
        return self.config.overlong

    @property
    def train_on_prompt(self) -> bool:
        """See :class:`TokenizeConfig`."""
        return self.config.train_on_prompt

    def render(self, example: SFTExample, eos_token: str) -> tuple[Rendered]:
        """The example in the configured template (see :func:`~elmtune.datasets.templates.render_sft`)."""
        config = self.config
        return (render_sft(example, config.template, eos_token=eos_token, system_prompt=config.system_prompt),)

    def shorten(self, sequences: list[Encoded]) -> list[Encoded]:
        """The one sequence cut by :func:`truncate` on the configured side."""
        return [truncate(ids, labels, self.config.max_length, self.config.truncation_side) for ids, labels in sequences]

    def build(self, example: SFTExample, sequences: list[Encoded], truncated: bool) -> TokenizedExample:
        """A :class:`TokenizedExample`."""
        ((ids, labels),) = sequences
        return TokenizedExample(ids, labels, example.where, truncated)


def tokenize_sft(
    examples: Iterable[SFTExample],
    tokenizer: Any,
    config: TokenizeConfig | None = None,
    *,
    skip_invalid: bool = False,
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Render and tokenise supervised examples, with labels, truncation and counts.

    Args:
        examples: Typed examples (from :func:`elmtune.datasets.load_sft_examples`).
        tokenizer: A fast tokenizer (:func:`elmtune.models.load_tokenizer`).
        config: Template, masking and length policy; defaults to :class:`TokenizeConfig()`.
        skip_invalid: Skip examples whose text holds a special-token string instead of raising.

    Returns:
        The kept examples in input order, and a :class:`TokenizeReport` (truncated examples are counted there and
        logged).

    Raises:
        DataRowError: Special-token text in a row (unless ``skip_invalid``), or an over-long example with
            ``overlong="error"``.
        ValueError: A template that cannot render an example.
    """
    config = config or TokenizeConfig()
    kept, report = tokenize_examples(examples, tokenizer, SFTRendering(config), skip_invalid=skip_invalid)
    if report.truncated or report.dropped_overlong or report.dropped_no_target:
        logger.warning(
            "max_length %d: %d example(s) truncated (%s side), %d dropped as too long, %d dropped with no target left",
            config.max_length,
            report.truncated,
            config.truncation_side,
            report.dropped_overlong,
            report.dropped_no_target,
        )
    return kept, report
