"""Raw rows from local files (JSON, JSON lines, CSV, Parquet), saved datasets and the Hugging Face Hub.

Local JSON, JSON lines and CSV files are parsed here with the standard library, so every row keeps its exact types
and its line or row number (Arrow-based readers coerce or reject mixed-type columns for the whole file). Parquet is
read with pyarrow; directories and hub ids go through the ``datasets`` library.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmtune.datasets.errors import DataSourceError

JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
LOCAL_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES


@dataclass(frozen=True)
class Record:
    """One raw row.

    Attributes:
        where: Location for messages: ``"train.jsonl, line 12"`` (JSON lines: the file line), ``"data.json, row 3"``
            (JSON arrays, CSV, Parquet and datasets: 1-based row number).
        value: The parsed row (a dict for well-formed data); ``None`` when the row could not be parsed.
        error: Why the row could not be parsed (invalid JSON on one line), else ``None``.
    """

    where: str
    value: Any = None
    error: str | None = None


def read_records(
    source: str | Path, *, split: str = "train", subset: str | None = None, revision: str | None = None
) -> Iterator[Record]:
    """Yield the rows of a data source, in order.

    Args:
        source: A local file (``.json`` array or JSON lines, ``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``), a local
            directory (a ``save_to_disk`` dataset or a folder of data files), or a Hugging Face Hub dataset id.
        split: Split to read from directories and hub datasets (ignored for single files).
        subset: Hub configuration name (``load_dataset(id, name=subset)``).
        revision: Hub revision (branch, tag or commit).

    Yields:
        One :class:`Record` per row.

    Raises:
        DataSourceError: The source does not exist, has an unknown format, or cannot be reached.
    """
    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from _jsonl(path)
        elif suffix in JSON_SUFFIXES:
            yield from _json(path)
        elif suffix in CSV_SUFFIXES:
            yield from _csv(path, delimiter="\t" if suffix == ".tsv" else ",")
        elif suffix in PARQUET_SUFFIXES:
            yield from _parquet(path)
        else:
            raise DataSourceError(
                f"{source}: unknown data file type {suffix or '(no suffix)'!r}; use one of {', '.join(LOCAL_SUFFIXES)}"
            )
    elif path.is_dir():
        yield from _hf_rows(_load_directory(path, split), f"{source} [{split}]")
    elif _looks_local(str(source)):
        raise DataSourceError(f"{source}: no such file or directory")
    else:
        yield from _hf_rows(_load_hub(str(source), split, subset, revision), f"{source} [{split}]")


def _looks_local(source: str) -> bool:
    """Whether a missing source was meant as a path rather than a hub id (``owner/name`` or ``name``)."""
    return (
        source.lower().endswith(LOCAL_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 with an optional byte-order mark; CRLF line ends are fine for every reader here.

    Raises:
        DataSourceError: The file is not UTF-8, naming the line and column of the first bad byte.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataSourceError(
            f"{path}, line {line}: byte {raw[err.start]:#04x} at column {column} is not UTF-8; save the file as UTF-8"
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of each line, streamed; UTF-8 with an optional byte-order mark, LF or CRLF."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataSourceError(
                    f"{path}, line {number}: byte {raw[err.start]:#04x} at column {err.start + 1} is not UTF-8; save "
                    "the file as UTF-8"
                ) from None


def _jsonl(path: Path, text: str | None = None) -> Iterator[Record]:
    lines = _lines(path) if text is None else enumerate(text.splitlines(), start=1)
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            yield Record(where, json.loads(line))
        except json.JSONDecodeError as err:
            yield Record(where, error=f"invalid JSON ({err.msg} at column {err.colno})")


def _json(path: Path) -> Iterator[Record]:
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        # Many ".json" files are JSON lines (the ``datasets`` JSON loader reads both).
        yield from _jsonl(path, text)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataSourceError(f"{path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    for number, row in enumerate(rows, start=1):
        yield Record(f"{path}, row {number}", row)


def _csv(path: Path, delimiter: str) -> Iterator[Record]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataSourceError(f"{path}: empty file or missing header row")
    for number, row in enumerate(reader, start=1):
        # Short rows give None for the missing columns: that reads as "missing" later on.
        row.pop(None, None)  # surplus cells of a long row
        yield Record(f"{path}, row {number}", row)


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataSourceError(f"{path}: cannot read Parquet file ({err})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield Record(f"{path}, row {number}", row)


def _hf_rows(dataset: Any, label: str) -> Iterator[Record]:
    for number, row in enumerate(dataset, start=1):
        yield Record(f"{label}, row {number}", row)


def _pick_split(dataset: Any, split: str, label: str) -> Any:
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise DataSourceError(f"{label}: no split {split!r}; available: {', '.join(dataset)}")
        return dataset[split]
    return dataset


def _load_directory(path: Path, split: str) -> Any:
    import datasets

    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _pick_split(datasets.load_from_disk(str(path)), split, str(path))
        return datasets.load_dataset(str(path), split=split)
    except DataSourceError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise DataSourceError(f"{path}: cannot load as a dataset ({_first_line(err)})") from None


def _load_hub(dataset_id: str, split: str, subset: str | None, revision: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(dataset_id, subset, split=split, revision=revision)
    except ConnectionError:
        raise DataSourceError(
            f"cannot reach the Hugging Face Hub for dataset '{dataset_id}' (offline, or HF_HUB_OFFLINE=1, and it is "
            "not in the local cache); download it where there is network or pass a local file"
        ) from None
    except datasets.exceptions.DatasetNotFoundError:
        raise DataSourceError(f"'{dataset_id}' is neither a local file nor a dataset on the Hugging Face Hub") from None
    except ValueError as err:  # unknown split or configuration
        raise DataSourceError(f"{dataset_id}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
