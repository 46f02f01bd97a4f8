"""Load a data source into validated, typed examples, with every bad row either raised or skipped and counted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from elmtune.datasets.errors import DataRowError, DataSourceError
from elmtune.datasets.examples import PreferenceExample, SFTExample
from elmtune.datasets.formats import FORMATS, PREFERENCE_FORMATS, SFT_FORMATS, detect_format, parse_sft_row
from elmtune.datasets.pair_drops import PairDrops
from elmtune.datasets.preference_rows import PreferenceRowReader
from elmtune.datasets.records import Record, read_records

logger = logging.getLogger(__name__)

T = TypeVar("T")
_KEPT_ERRORS = 5


@dataclass(frozen=True)
class LoadReport:
    """What loading found.

    Attributes:
        source: The source as given.
        format: The declared or detected format.
        rows: Rows read.
        invalid: Rows skipped as invalid (only with ``skip_invalid``).
        errors: The first few skipped rows' messages (``"file, line N: reason"``).
        pair_drops: Preference rows without a usable pair, skipped and counted by reason (always, not only with
            ``skip_invalid``).
    """

    source: str
    format: str
    rows: int
    invalid: int = 0
    errors: tuple[str, ...] = ()
    pair_drops: PairDrops = field(default_factory=PairDrops)

    @property
    def valid(self) -> int:
        """Rows turned into examples."""
        return self.rows - self.invalid - self.pair_drops.rows


def _first_mapping_format(records: list[Record]) -> str | None:
    for record in records:
        if record.error is None and isinstance(record.value, dict):
            return detect_format(record.value)
    return None


def _collect(
    records: Iterator[Record],
    parse: Callable[[Record], T | None],
    *,
    source: str,
    data_format: str,
    skip_invalid: bool,
    limit: int | None,
    head: list[Record],
    drops: Callable[[], PairDrops] = PairDrops,
) -> tuple[list[T], LoadReport]:
    """Parse every record; ``parse`` returns ``None`` for a row it skipped and counted in ``drops()``."""
    examples: list[T] = []
    rows = invalid = 0
    errors: list[str] = []
    for record in _chain(head, records):
        if limit is not None and len(examples) >= limit:
            break
        rows += 1
        try:
            if record.error is not None:
                raise DataRowError(record.where, record.error)
            example = parse(record)
            if example is not None:
                examples.append(example)
        except DataRowError as err:
            if not skip_invalid:
                raise
            invalid += 1
            if len(errors) < _KEPT_ERRORS:
                errors.append(str(err))
    if rows == 0:
        raise DataSourceError(f"{source}: no rows")
    skipped = drops()
    if not examples:
        first = f"; first: {errors[0]}" if errors else ""
        dropped = f"; {skipped.describe()}" if skipped.rows else ""
        raise DataSourceError(f"{source}: no valid rows ({invalid} invalid skipped{first}{dropped})")
    if invalid:
        logger.warning("%s: skipped %d invalid row(s) of %d; first: %s", source, invalid, rows, errors[0])
    if skipped.rows:
        logger.warning("%s: %s of %d", source, skipped.describe(), rows)
    return examples, LoadReport(source, data_format, rows, invalid, tuple(errors), skipped)


def _chain(head: list[Record], rest: Iterator[Record]) -> Iterator[Record]:
    yield from head
    yield from rest


def _peek(records: Iterator[Record], count: int = 16) -> list[Record]:
    head = []
    for record in records:
        head.append(record)
        if len(head) >= count:
            break
    return head


def _no_rows(source: str | Path, head: list[Record]) -> None:
    """Raise for a source without a single row (an empty file) before guessing its format."""
    if not head:
        raise DataSourceError(f"{source}: holds no rows; is it the right file?")


def _describe_fields(head: list[Record]) -> str:
    for record in head:
        if isinstance(record.value, dict):
            return f"the fields ({', '.join(sorted(record.value)) or 'none'})"
    return "its rows, which are not JSON objects"


def load_sft_examples(
    source: str | Path,
    data_format: str = "auto",
    *,
    split: str = "train",
    subset: str | None = None,
    revision: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> tuple[list[SFTExample], LoadReport]:
    """Read and validate a supervised fine-tuning data source.

    Args:
        source: A local ``.json``/``.jsonl``/``.csv``/``.tsv``/``.parquet`` file, a dataset directory or a hub id.
        data_format: ``auto`` (detected from the first row's fields) or one of ``alpaca``, ``commonsense``,
            ``messages``, ``prompt_completion``, ``text``.
        split: Split of a directory or hub dataset.
        subset: Hub configuration name.
        revision: Hub revision.
        skip_invalid: Skip bad rows and count them instead of raising on the first one.
        limit: Stop after this many valid examples.

    Returns:
        The examples, in source order, and a :class:`LoadReport`.

    Raises:
        DataSourceError: The source cannot be read, its format cannot be detected, it holds preference data, or it
            has no (valid) rows.
        DataRowError: A bad row, naming the file, the row and the problem (unless ``skip_invalid``).
    """
    if data_format != "auto" and data_format not in SFT_FORMATS:
        raise DataSourceError(f"unknown data format {data_format!r}; use auto or one of {', '.join(SFT_FORMATS)}")
    records = read_records(source, split=split, subset=subset, revision=revision)
    head = _peek(records)
    _no_rows(source, head)
    if data_format == "auto":
        detected = _first_mapping_format(head)
        if detected is None:
            raise DataSourceError(
                f"{source}: cannot tell the data format from {_describe_fields(head)}; "
                f"pass a format: {', '.join(SFT_FORMATS)}"
            )
        if detected in PREFERENCE_FORMATS:
            raise DataSourceError(
                f"{source}: holds preference pairs ({detected}); load it as preference data, not for SFT"
            )
        data_format = detected
    fmt = data_format
    return _collect(
        records,
        lambda record: parse_sft_row(record.value, fmt, record.where),
        source=str(source),
        data_format=fmt,
        skip_invalid=skip_invalid,
        limit=limit,
        head=head,
    )


def load_preference_examples(
    source: str | Path,
    data_format: str = "auto",
    *,
    split: str = "train",
    subset: str | None = None,
    revision: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[PreferenceExample], LoadReport]:
    """Read and validate preference pairs in any preference format; rows without a usable pair are counted.

    Args:
        source: A local file, a dataset directory or a hub id (``HuggingFaceH4/ultrafeedback_binarized`` with
            ``split="train_prefs"``).
        data_format: ``auto`` (detected from the first row's fields; ``preference`` when they fit no preference
            format) or one of ``preference`` (H4/argilla/TRL layouts), ``sharegpt_preference``,
            ``alpaca_preference`` (LLaMA-Factory) or ``ultrafeedback_raw`` (binarised while loading).
        split: Split of a directory or hub dataset.
        subset: Hub configuration name.
        revision: Hub revision.
        skip_invalid: Skip bad rows and count them instead of raising on the first one.
        limit: Stop after this many valid examples.
        seed: The data seed; raw UltraFeedback draws each rejected reply with it.

    Returns:
        The examples, in source order, and a :class:`LoadReport` (its ``pair_drops`` counts the skipped rows).

    Raises:
        DataSourceError: The source cannot be read, the format is not a preference format, or no row is usable.
        DataRowError: A bad row, naming the file, the row and the problem (unless ``skip_invalid``).
    """
    if data_format != "auto" and data_format not in PREFERENCE_FORMATS:
        raise DataSourceError(
            f"{data_format!r} is not a preference format; use auto or one of {', '.join(PREFERENCE_FORMATS)}"
        )
    records = read_records(source, split=split, subset=subset, revision=revision)
    head = _peek(records)
    if data_format == "auto":
        detected = _first_mapping_format(head)
        data_format = detected if detected in PREFERENCE_FORMATS else "preference"
    reader = PreferenceRowReader(data_format, seed)
    return _collect(
        records,
        lambda record: reader(record.value, record.where),
        source=str(source),
        data_format=data_format,
        skip_invalid=skip_invalid,
        limit=limit,
        head=head,
        drops=lambda: reader.drops,
    )


def detect_source_format(
    source: str | Path, *, split: str = "train", subset: str | None = None, revision: str | None = None
) -> str:
    """The format of a source, from the fields of its first object row.

    Raises:
        DataSourceError: The source cannot be read or its fields fit no format.
    """
    head = _peek(read_records(source, split=split, subset=subset, revision=revision))
    _no_rows(source, head)
    detected = _first_mapping_format(head)
    if detected is None:
        raise DataSourceError(
            f"{source}: cannot tell the data format from {_describe_fields(head)}; pass a format: {', '.join(FORMATS)}"
        )
    return detected
