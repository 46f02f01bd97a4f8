"""Errors raised while reading and preparing data: each names where the problem is and what it is."""

from __future__ import annotations

from elmtune.errors import ElmtuneError


class DataSourceError(ElmtuneError):
    """A data source cannot be opened: a missing file, an unknown format, or a hub dataset that cannot be reached."""


class DataRowError(ElmtuneError):
    """One row is unusable (a missing field, a wrong type, an empty text...).

    Attributes:
        where: The row's location, e.g. ``"train.jsonl, line 12"``.
        reason: What is wrong, e.g. ``"field 'output' is missing"``.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
