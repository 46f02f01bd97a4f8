"""acc / acc_norm (characters, not tokens or bytes), first-index ties and lm-eval's standard error."""

import math

import pytest

from elmtune.evaluation.data import ChoiceScore, Question
from elmtune.evaluation.report import argmax, mean_stderr, predict


def _scores(lls, tokens=None):
    tokens = tokens or [1] * len(lls)
    return [ChoiceScore(ll, n, False) for ll, n in zip(lls, tokens, strict=True)]


def test_acc_norm_divides_by_characters_not_tokens_or_bytes():
    # Choice 0: "héé" is 3 characters but 5 UTF-8 bytes; choice 1: "abcd" is 4 characters and 4 bytes.
    question = Question("t", 0, (("q", " héé"), ("q", " abcd")), 1, ("héé", "abcd"), (len("héé"), len("abcd")))
    scores = _scores([-6.0, -7.0], tokens=[7, 1])
    prediction = predict(question, scores)
    assert prediction.pred == 0  # -6 > -7
    # per character -6/3 = -2.0 < -7/4 = -1.75: choice 1. Per byte (-6/5 = -1.2 > -1.75) or per token
    # (-6/7 > -7/1) it would be choice 0.
    assert prediction.pred_norm == 1
    assert question.norm_lengths == (3, 4)


def test_ties_take_the_first_index_like_numpy():
    assert argmax([1.0, 3.0, 3.0]) == 1
    assert argmax([-2.0]) == 0


def test_stderr_is_the_sample_standard_deviation_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mu = 0.75
    expected = math.sqrt(sum((v - mu) ** 2 for v in values) / 3) / 2
    assert mean_stderr(values) == pytest.approx(expected)
    assert math.isnan(mean_stderr([1.0]))
