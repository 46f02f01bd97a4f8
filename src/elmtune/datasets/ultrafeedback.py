"""Raw UltraFeedback rows binarised into preference pairs, the way HuggingFaceH4 built ``ultrafeedback_binarized``.

A raw row of openbmb/UltraFeedback holds an ``instruction`` and ``completions``, each with a ``response`` and
GPT-4 ``annotations`` that rate four aspects (``helpfulness``, ``honesty``, ``instruction_following``,
``truthfulness``; ``Rating`` "1"-"5" or "N/A")::

    {"instruction": "...", "source": "evol_instruct",
     "completions": [{"model": "...", "response": "...",
                      "annotations": {"helpfulness": {"Rating": "4", "Rationale": "..."}, "honesty": {...}, ...},
                      "fine-grained_score": 4.25, "overall_score": 7.5}, ...]}

A completion's rating is the mean of its aspect ratings, ``N/A`` ones left out. Completions with an empty response
or with every rating ``N/A`` are left out and counted. Of the rest, the chosen reply is the best-rated (the first
one in the row on a tie for best) and the rejected reply is drawn at random among those rated strictly lower. The
draw is seeded by the data seed and the row's own text, so it is the same in every run and does not depend on the
row's position. A row with fewer than two usable completions, or whose usable completions all tie with the best, is
skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import Message, PreferenceExample
from elmtune.datasets.formats import row_mapping, string_field, type_name
from elmtune.datasets.pair_drops import SkippedPair, require_sides

ASPECTS: tuple[str, ...] = ("helpfulness", "honesty", "instruction_following", "truthfulness")
"""The rated aspects whose mean ranks the completions."""
NOT_RATED = "N/A"


@dataclass(frozen=True)
class RatedCompletion:
    """One completion of a raw UltraFeedback row.

    Attributes:
        response: The completion's text.
        rating: Mean of its aspect ratings without the ``N/A`` ones; ``None`` when every rating is ``N/A``.
        model: The model that wrote it (``""`` if not given).
    """

    response: str
    rating: float | None
    model: str = ""

    @property
    def usable(self) -> bool:
        """Whether it can be a side of a pair: a non-empty response with a rating."""
        return self.rating is not None and bool(self.response.strip())


@dataclass(frozen=True)
class UltraFeedbackRow:
    """A validated raw UltraFeedback row.

    Attributes:
        instruction: The prompt.
        completions: Every completion, in the row's order.
        where: The row's location in its source.
    """

    instruction: str
    completions: tuple[RatedCompletion, ...]
    where: str = ""


def _rating(value: Any, where: str, name: str) -> float | None:
    """One aspect's ``Rating`` as a number (``"4"`` or 4), ``None`` for ``N/A``.

    Raises:
        DataRowError: Neither a finite number, a numeric string nor ``N/A``.
    """
    if isinstance(value, str):
        if value.strip() == NOT_RATED:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number):
        raise DataRowError(where, f"{name} must be a number or {NOT_RATED!r}, got {value!r}")
    return number


def _mean_rating(annotations: Any, where: str, name: str) -> float | None:
    """Mean of the aspect ratings of one completion, ``N/A`` and absent aspects left out; ``None`` if none is left.

    Raises:
        DataRowError: ``annotations`` is not an object, or an aspect has no readable ``Rating``.
    """
    if not isinstance(annotations, Mapping):
        raise DataRowError(where, f"{name} must be an object of per-aspect ratings, got {type_name(annotations)}")
    ratings = []
    for aspect in ASPECTS:
        entry = annotations.get(aspect)
        if isinstance(entry, list | tuple) and len(entry) == 1:  # some exports wrap each aspect in a list
            entry = entry[0]
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "Rating" not in entry:
            raise DataRowError(where, f"{name}.{aspect} must be an object with a 'Rating', got {type_name(entry)}")
        rating = _rating(entry["Rating"], where, f"{name}.{aspect}.Rating")
        if rating is not None:
            ratings.append(rating)
    return sum(ratings) / len(ratings) if ratings else None


def read_ultrafeedback_row(row: Any, where: str) -> UltraFeedbackRow:
    """Validate a raw UltraFeedback row's types (see the module docstring); nothing is dropped here.

    Raises:
        DataRowError: A missing or mistyped field or rating, naming the row and field.
    """
    row = row_mapping(row, where)
    instruction = string_field(row, "instruction", where, allow_empty=True)
    raw = row.get("completions")
    if not isinstance(raw, list | tuple):
        raise DataRowError(where, f"field 'completions' must be a list of completions, got {type_name(raw)}")
    completions = []
    for i, item in enumerate(raw):
        name = f"completions[{i}]"
        if not isinstance(item, Mapping):
            expected = "an object with 'response' and 'annotations'"
            raise DataRowError(where, f"{name} must be {expected}, got {type_name(item)}")
        response = item.get("response")
        if not isinstance(response, str):
            raise DataRowError(where, f"{name}.response must be a string, got {type_name(response)}")
        model = item.get("model")
        rating = _mean_rating(item.get("annotations"), where, f"{name}.annotations")
        completions.append(RatedCompletion(response, rating, model if isinstance(model, str) else ""))
    return UltraFeedbackRow(instruction, tuple(completions), where)


def _draw_seed(row: UltraFeedbackRow, seed: int) -> int:
    """A seed for the row's draw from the data seed and the row's text (not its position)."""
    text = json.dumps([seed, row.instruction, [c.response for c in row.completions]], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def binarize(row: UltraFeedbackRow, seed: int) -> PreferenceExample:
    """The pair of a raw row: the best-rated usable completion against a random strictly lower-rated one.

    Args:
        row: A validated row (:func:`read_ultrafeedback_row`).
        seed: The data seed; the draw also depends on the row's text, never on its position.

    Returns:
        The pair, with the two mean ratings as ``score_chosen`` and ``score_rejected``.

    Raises:
        SkippedPair: ``empty_prompt``, ``too_few_completions`` (fewer than two usable) or ``no_lower_rated``.
    """
    if not row.instruction.strip():
        raise SkippedPair(row.where, "empty_prompt")
    usable = [c for c in row.completions if c.usable]
    if len(usable) < 2:
        raise SkippedPair(row.where, "too_few_completions")
    best = max(usable, key=lambda c: c.rating)  # the first of the best on a tie
    lower = [c for c in usable if c.rating < best.rating]
    if not lower:
        raise SkippedPair(row.where, "no_lower_rated")
    rejected = random.Random(_draw_seed(row, seed)).choice(lower)
    pair = PreferenceExample(
        prompt=(Message("user", row.instruction),),
        chosen=best.response,
        rejected=rejected.response,
        score_chosen=best.rating,
        score_rejected=rejected.rating,
        where=row.where,
    )
    return require_sides(pair)
