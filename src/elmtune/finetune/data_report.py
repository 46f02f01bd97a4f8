"""What the run's data became after loading and tokenisation, recorded in ``data_report.json`` in the run directory.

The counts are those :func:`elmtune.datasets.prepare_data` reports (rows read and skipped, examples kept, truncated
and dropped, tokens); the run writes them once it holds the run directory, and the adapter card
(:mod:`elmtune.finetune.adapter_card`) shows them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from elmtune.datasets.prepare import PreparedData

DATA_REPORT_FILE = "data_report.json"


@dataclass(frozen=True)
class DataReport:
    """The run's data after loading and tokenisation.

    Attributes:
        source: The data source as given.
        format: The declared or detected format.
        kind: ``sft`` (examples) or ``preference`` (pairs).
        rows: Rows read.
        invalid: Rows skipped as invalid (bad rows with ``skip_invalid``, special-token text).
        unusable_pairs: Preference rows without a usable pair (empty prompt or reply, no lower-rated completion).
        examples: Examples (or pairs) tokenised.
        kept: Examples (or pairs) kept after tokenisation.
        truncated: Kept examples cut to ``max_length``.
        dropped_overlong: Examples dropped for length (``overlong: drop``).
        dropped_no_target: Examples dropped because no target token was left within ``max_length``.
        dropped_identical: Pairs dropped because chosen and rejected are the same tokens.
        tokens: Tokens in the kept examples.
        target_tokens: Target (trained) tokens in the kept examples.
        longest: The longest example before truncation, in tokens.
        training_items: Items trained on (examples, pairs, or packs with ``packing``).
        held_out: Items held out for validation.
        packed: Whether the training items are packs.
    """

    source: str
    format: str
    kind: str
    rows: int
    invalid: int
    unusable_pairs: int
    examples: int
    kept: int
    truncated: int
    dropped_overlong: int
    dropped_no_target: int
    dropped_identical: int
    tokens: int
    target_tokens: int
    longest: int
    training_items: int
    held_out: int
    packed: bool

    @classmethod
    def from_prepared(cls, data: PreparedData) -> DataReport:
        """The report of prepared data."""
        load, tokenized = data.load_report, data.tokenize_report
        return cls(
            source=str(load.source),
            format=str(load.format),
            kind=data.kind,
            rows=int(load.rows),
            invalid=int(load.invalid + tokenized.invalid),
            unusable_pairs=int(load.pair_drops.rows),
            examples=int(tokenized.examples),
            kept=int(tokenized.kept),
            truncated=int(tokenized.truncated),
            dropped_overlong=int(tokenized.dropped_overlong),
            dropped_no_target=int(tokenized.dropped_no_target),
            dropped_identical=int(tokenized.dropped_identical),
            tokens=int(tokenized.tokens),
            target_tokens=int(tokenized.target_tokens),
            longest=int(tokenized.longest),
            training_items=len(data.train),
            held_out=len(data.validation) if data.validation is not None else 0,
            packed=bool(data.packed),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataReport:
        """Inverse of ``dataclasses.asdict`` (unknown keys are ignored; a missing one raises ``TypeError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


def write_data_report(run_dir: Path, data: PreparedData) -> Path:
    """Write ``run_dir/data_report.json`` for ``data``; returns its path."""
    path = Path(run_dir) / DATA_REPORT_FILE
    path.write_text(json.dumps(dataclasses.asdict(DataReport.from_prepared(data)), indent=1) + "\n", encoding="utf-8")
    return path


def read_data_report(run_dir: Path) -> DataReport | None:
    """The data report of the run in ``run_dir``; None when it has none (earlier versions) or it is unreadable."""
    path = Path(run_dir) / DATA_REPORT_FILE
    try:
        return DataReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


__all__ = ["DATA_REPORT_FILE", "DataReport", "read_data_report", "write_data_report"]
