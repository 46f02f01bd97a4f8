"""Accuracy metrics and their standard errors, computed as lm-eval does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from elmtune.evaluation.items import ChoiceScore, Question


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (as ``numpy.argmax``)."""
    best = 0
    for i, value in enumerate(values):
        if value > values[best]:
            best = i
    return best


@dataclass(frozen=True)
class Prediction:
    """Per-question predictions: ``pred`` by summed log-likelihood, ``pred_norm`` by log-likelihood per character."""

    pred: int
    pred_norm: int


def predict(question: Question, scores: Sequence[ChoiceScore]) -> Prediction:
    """argmax of the summed log-likelihoods and of the log-likelihoods divided by each choice's character length."""
    lls = [score.loglikelihood for score in scores]
    per_char = [ll / length for ll, length in zip(lls, question.norm_lengths, strict=True)]
    return Prediction(argmax(lls), argmax(per_char))


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (0.0 for no values)."""
    return sum(values) / len(values) if values else 0.0


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample standard deviation (n - 1), as lm-eval's ``mean_stderr``."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)
