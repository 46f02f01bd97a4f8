"""Typed rows shared by every protocol: a multiple-choice question and its scored choices."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as (context, continuation) requests, one request per choice.

    Attributes:
        task: Task name the question belongs to.
        index: Row of the question in its source file (before any shuffle).
        requests: ``(context, continuation)`` per choice. Usually one context shared by all choices; partial scoring
            (WinoGrande) has one context per choice and a shared continuation.
        gold: Index of the correct choice.
        labels: Printable label per choice (``answer2``, the choice text...), used in per-example output.
        norm_lengths: Character length per choice that ``acc_norm`` divides by.
        meta: Extra fields copied into the per-example output.
    """

    task: str
    index: int
    requests: tuple[tuple[str, str], ...]
    gold: int
    labels: tuple[str, ...]
    norm_lengths: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError(f"{self.task} row {self.index}: a question needs at least one choice")
        if not len(self.requests) == len(self.labels) == len(self.norm_lengths):
            raise ValueError(f"{self.task} row {self.index}: requests, labels and norm_lengths differ in length")
        if not 0 <= self.gold < len(self.requests):
            raise ValueError(f"{self.task} row {self.index}: gold {self.gold} is not a choice index")


@dataclass(frozen=True)
class ChoiceScore:
    """Log-likelihood of one continuation.

    Attributes:
        loglikelihood: Sum of the continuation tokens' log-probabilities (fp32).
        num_tokens: Number of continuation tokens scored.
        is_greedy: Whether every continuation token is the model's argmax.
    """

    loglikelihood: float
    num_tokens: int
    is_greedy: bool

    def __post_init__(self) -> None:
        if not math.isfinite(self.loglikelihood):
            from elmtune.models.finite import NonFiniteError

            raise NonFiniteError(
                f"a log-likelihood is {self.loglikelihood}: the model produced NaN or infinite logits, so no score "
                "can be computed; check the model and adapter weights (or evaluate in fp32)"
            )
