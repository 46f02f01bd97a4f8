"""One reader for every preference format: a row in, a typed pair out, or the row skipped and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from elmtune.datasets.examples import PreferenceExample
from elmtune.datasets.formats import PREFERENCE_FORMATS, parse_preference_row
from elmtune.datasets.llamafactory import parse_alpaca_pair, parse_sharegpt_pair
from elmtune.datasets.pair_drops import DROP_COUNTS, PairDrops, SkippedPair
from elmtune.datasets.ultrafeedback import binarize, read_ultrafeedback_row

_PAIR_PARSERS: dict[str, Callable[[Any, str], PreferenceExample]] = {
    "preference": parse_preference_row,
    "sharegpt_preference": parse_sharegpt_pair,
    "alpaca_preference": parse_alpaca_pair,
}


class PreferenceRowReader:
    """Reads rows of one preference format into pairs and counts the rows it skips.

    Args:
        data_format: One of :data:`~elmtune.datasets.formats.PREFERENCE_FORMATS`.
        seed: The data seed; raw UltraFeedback draws each rejected reply with it.

    Raises:
        ValueError: For a format that is not a preference format.
    """

    def __init__(self, data_format: str, seed: int = 0) -> None:
        if data_format not in PREFERENCE_FORMATS:
            raise ValueError(f"{data_format!r} is not a preference format; use one of {', '.join(PREFERENCE_FORMATS)}")
        self.data_format = data_format
        self.seed = seed
        self._counts = dict.fromkeys(DROP_COUNTS, 0)

    def __call__(self, row: Any, where: str) -> PreferenceExample | None:
        """The pair of one row, or ``None`` when the row holds no usable pair (then it is counted in :attr:`drops`).

        Raises:
            DataRowError: A malformed row, naming the row and the field.
        """
        try:
            if self.data_format == "ultrafeedback_raw":
                return self._binarize(row, where)
            return _PAIR_PARSERS[self.data_format](row, where)
        except SkippedPair as skipped:
            self._counts[skipped.reason] += 1
            return None

    def _binarize(self, row: Any, where: str) -> PreferenceExample:
        """A raw UltraFeedback row's pair; its completions without a response or a rating are counted."""
        rated = read_ultrafeedback_row(row, where)
        answered = [c for c in rated.completions if c.response.strip()]
        self._counts["empty_responses"] += len(rated.completions) - len(answered)
        self._counts["unrated_responses"] += sum(c.rating is None for c in answered)
        return binarize(rated, self.seed)

    @property
    def drops(self) -> PairDrops:
        """What was skipped so far."""
        return PairDrops(**self._counts)
