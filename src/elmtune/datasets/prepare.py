"""One call from a data config to what a training loop needs: datasets, lengths for the sampler, a collate function.

```python
data = prepare_data(DataConfig(path="train.jsonl", max_length=1024), tokenizer)
sampler = LengthGroupedBatchSampler(data.train_lengths, batch_size=8, seed=0)
loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=data.collate)
```
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from elmtune.datasets.collate import collate_padded
from elmtune.datasets.config import DataConfig
from elmtune.datasets.errors import DataSourceError
from elmtune.datasets.formats import PREFERENCE_FORMATS
from elmtune.datasets.loading import (
    LoadReport,
    detect_source_format,
    load_preference_examples,
    load_sft_examples,
)
from elmtune.datasets.packing import (
    PackedDataset,
    collate_packed,
    collate_packs_padding_free,
    collate_padding_free,
)
from elmtune.datasets.preference import PreferenceTokenizeConfig, collate_preference, tokenize_preference
from elmtune.datasets.supervised import TokenizeConfig, tokenize_sft
from elmtune.datasets.tokenize_pipeline import TokenizeReport
from elmtune.models import PAD_TOKEN_ID

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    """Datasets ready for a ``DataLoader``.

    Attributes:
        kind: ``sft`` or ``preference``.
        train: Map-style dataset: tokenised examples, packs (:class:`PackedDataset`) or tokenised pairs.
        train_lengths: Tokens per item of ``train`` (for :class:`LengthGroupedBatchSampler`).
        validation: Held-out items (same kind), or ``None``.
        validation_lengths: Tokens per item of ``validation``, or ``None``.
        collate: Picklable function turning a list of items into a batch of tensors.
        load_report: Rows read and skipped.
        tokenize_report: Truncated and dropped counts, token totals.
        packed: Whether items are packs.
    """

    kind: str
    train: Sequence[Any]
    train_lengths: list[int]
    validation: Sequence[Any] | None
    validation_lengths: list[int] | None
    collate: Callable[[list[Any]], dict[str, Any]]
    load_report: LoadReport
    tokenize_report: TokenizeReport
    packed: bool = False

    def summary(self) -> str:
        """One line for logs."""
        t = self.tokenize_report
        held = f", {len(self.validation)} held out" if self.validation is not None else ""
        items = "packs" if self.packed else ("pairs" if self.kind == "preference" else "examples")
        return (
            f"{self.load_report.source} ({self.load_report.format}): {self.load_report.rows} rows, "
            f"{self.load_report.invalid + t.invalid} invalid skipped, {t.truncated} truncated, "
            f"{t.dropped_overlong + t.dropped_no_target} dropped"
            + (f", {t.dropped_identical} identical pairs skipped" if t.dropped_identical else "")
            + (f", {drops}" if (drops := self.load_report.pair_drops.describe()) else "")
            + f"; {len(self.train)} training {items}{held}; "
            f"{t.tokens} tokens ({t.target_tokens} targets)"
        )


def holdout_split(count: int, size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of ``range(count)``; both index lists ascending.

    Raises:
        ValueError: When the hold-out would leave no training example.
    """
    n_val = int(round(count * size)) if isinstance(size, float) else int(size)
    if n_val == 0:
        return list(range(count)), []
    if n_val >= count:
        raise DataSourceError(
            f"validation_size {size} leaves no training example out of {count}; use a smaller --validation-size "
            "(a count or a fraction such as 0.05)"
        )
    perm = np.random.default_rng([seed, 0x5E1]).permutation(count)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def _package(items: list[Any], config: DataConfig) -> tuple[Sequence[Any], list[int]]:
    if config.packing:
        packed = PackedDataset(items, config.max_length, config.pack_strategy)
        return packed, packed.lengths
    return items, [len(item) for item in items]


def prepare_data(config: DataConfig, tokenizer: Any) -> PreparedData:
    """Load, validate, tokenise, split and (optionally) pack a data source.

    Args:
        config: The data settings.
        tokenizer: A fast tokenizer (:func:`elmtune.models.load_tokenizer`).

    Returns:
        A :class:`PreparedData`; its ``summary()`` reports rows, skipped rows and truncation counts.

    Raises:
        DataSourceError: The source cannot be read or its format cannot be detected.
        DataRowError: A bad row (without ``skip_invalid``), or an over-long one with ``overlong="error"``.
    """
    data_format = config.format
    if data_format == "auto":
        data_format = detect_source_format(
            config.path, split=config.split, subset=config.subset, revision=config.revision
        )
    source = {"split": config.split, "subset": config.subset, "revision": config.revision}
    if data_format in PREFERENCE_FORMATS:
        if config.packing or config.padding_free:
            raise ValueError("packing and padding_free are for SFT data, not preference pairs")
        pairs, load_report = load_preference_examples(
            config.path, data_format, skip_invalid=config.skip_invalid, limit=config.limit, seed=config.seed, **source
        )
        pref_config = PreferenceTokenizeConfig(
            max_length=config.max_length,
            max_prompt_length=config.max_prompt_length,
            template=config.template,
            overlong=config.overlong,
        )
        items, report = tokenize_preference(pairs, tokenizer, pref_config, skip_invalid=config.skip_invalid)
        collate = functools.partial(
            collate_preference, pad_token_id=PAD_TOKEN_ID, pad_to_multiple_of=config.pad_to_multiple_of
        )
        kind = "preference"
    else:
        examples, load_report = load_sft_examples(
            config.path, data_format, skip_invalid=config.skip_invalid, limit=config.limit, **source
        )
        tok_config = TokenizeConfig(
            max_length=config.max_length,
            template=config.template,
            train_on_prompt=config.train_on_prompt,
            overlong=config.overlong,
            truncation_side=config.truncation_side,
            system_prompt=config.system_prompt,
        )
        items, report = tokenize_sft(examples, tokenizer, tok_config, skip_invalid=config.skip_invalid)
        pad = {"pad_token_id": PAD_TOKEN_ID, "pad_to_multiple_of": config.pad_to_multiple_of}
        if config.padding_free:
            collate = collate_packs_padding_free if config.packing else collate_padding_free
        else:
            collate = functools.partial(collate_packed if config.packing else collate_padded, **pad)
        kind = "sft"
    if not items:
        raise DataSourceError(
            f"{config.path}: no example left after tokenisation ({report.invalid} with special-token text, "
            f"{report.dropped_overlong} too long, {report.dropped_no_target} with no target within max_length "
            f"{config.max_length}, {report.dropped_identical} pairs whose chosen and rejected are identical)"
        )
    train_idx, val_idx = holdout_split(len(items), config.validation_size, config.seed)
    train, train_lengths = _package([items[i] for i in train_idx], config)
    validation = validation_lengths = None
    if val_idx:
        validation, validation_lengths = _package([items[i] for i in val_idx], config)
    prepared = PreparedData(
        kind=kind,
        train=train,
        train_lengths=train_lengths,
        validation=validation,
        validation_lengths=validation_lengths,
        collate=collate,
        load_report=load_report,
        tokenize_report=report,
        packed=config.packing,
    )
    logger.info("data: %s", prepared.summary())
    return prepared
