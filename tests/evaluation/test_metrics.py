"""acc / acc_norm (characters, not tokens or bytes), first-index ties, lm-eval's standard error, Apple's subset."""

import math
import random

import pytest

from elmtune.evaluation.commonsense import APPLE_SEED, apple_question, apple_subset
from elmtune.evaluation.items import ChoiceScore, Question
from elmtune.evaluation.metrics import argmax, mean_stderr, predict


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


def test_apple_acc_norm_counts_the_continuation_without_the_moved_whitespace():
    row = {"instruction": "Pick.\n\nAnswer format: answer1/answer2/answer3", "answer": "answer2"}
    question = apple_question(row, "ARC-Easy")
    assert question.norm_lengths == (len("the correct answer is answer1"),) * 3 == (29, 29, 29)
    boolq = apple_question({"instruction": "Q?\n\nAnswer format: true/false", "answer": "false"}, "boolq")
    assert boolq.norm_lengths == (26, 27) and boolq.gold == 1


def test_ties_take_the_first_index_like_numpy():
    assert argmax([1.0, 3.0, 3.0]) == 1
    assert argmax([-2.0]) == 0


def test_stderr_is_the_sample_standard_deviation_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mu = 0.75
    expected = math.sqrt(sum((v - mu) ** 2 for v in values) / 3) / 2
    assert mean_stderr(values) == pytest.approx(expected)
    assert math.isnan(mean_stderr([1.0]))


def test_apple_subset_is_python_random_shuffle_with_seed_83652():
    rows = [{"i": i} for i in range(50)]
    reference = list(rows)
    random.seed(83652)
    random.shuffle(reference)
    assert apple_subset(rows, 7) == reference[:7] and APPLE_SEED == 83652
    assert apple_subset(rows, None) == rows  # no limit: file order, every row
