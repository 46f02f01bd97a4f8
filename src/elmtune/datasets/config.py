"""``DataConfig``: everything about the data of one run, as a typed, validated, frozen dataclass (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from elmtune.config_mapping import require
from elmtune.datasets.encoding import OVERLONG, SIDES
from elmtune.datasets.formats import FORMATS, PREFERENCE_FORMATS
from elmtune.datasets.templates import TEMPLATES


@dataclass(frozen=True)
class DataConfig:
    """Everything about the data of one run (the ``data:`` section of a recipe).

    Attributes:
        path: Local file, dataset directory or Hugging Face Hub dataset id.
        format: ``auto`` or one of ``alpaca``, ``commonsense``, ``messages``, ``prompt_completion``, ``text``
            (SFT), ``preference``, ``sharegpt_preference``, ``alpaca_preference``, ``ultrafeedback_raw`` (pairs).
        split: Split of a directory or hub dataset.
        subset: Hub configuration name.
        revision: Hub revision.
        template: ``auto``, ``alpaca``, ``chat`` or ``plain``.
        max_length: Longest sequence in tokens (BOS and EOS included).
        max_prompt_length: Preference data: longest prompt once a pair must be shortened.
        train_on_prompt: SFT: train on every token, prompt included (Apple's commonsense recipe).
        overlong: ``truncate``, ``drop`` or ``error`` for examples longer than ``max_length``.
        truncation_side: SFT: ``right`` keeps the start, ``left`` keeps BOS and the end.
        skip_invalid: Skip and count bad rows instead of stopping at the first.
        packing: SFT: pack several examples per row of ``max_length`` tokens (block-diagonal attention).
        pack_strategy: ``best_fit`` or ``sequential``.
        padding_free: SFT: each micro-batch's examples (with ``packing``: its packs' examples) in one row without
            padding (attention within each example): the same batches and loss, no compute spent on padding.
        system_prompt: Chat template: a system turn for conversations without one.
        limit: Use only the first ``limit`` valid rows.
        validation_size: Hold out this many examples (an int) or this fraction (a float in (0, 1)) for evaluation.
        seed: Seed of the hold-out split and of raw UltraFeedback's draw of rejected replies.
        pad_to_multiple_of: Round padded lengths up to a multiple of this.
    """

    path: str
    format: str = "auto"
    split: str = "train"
    subset: str | None = None
    revision: str | None = None
    template: str = "auto"
    max_length: int = 2048
    max_prompt_length: int = 512
    train_on_prompt: bool = False
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    truncation_side: Literal["right", "left"] = "right"
    skip_invalid: bool = False
    packing: bool = False
    pack_strategy: Literal["best_fit", "sequential"] = "best_fit"
    padding_free: bool = False
    system_prompt: str | None = None
    limit: int | None = None
    validation_size: int | float = 0
    seed: int = 0
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        require(
            "data",
            [
                (self.format in ("auto", *FORMATS), "format", f"must be auto or one of {', '.join(FORMATS)}"),
                (self.template in TEMPLATES, "template", f"must be one of {', '.join(TEMPLATES)}"),
                (self.overlong in OVERLONG, "overlong", f"must be one of {', '.join(OVERLONG)}"),
                (self.truncation_side in SIDES, "truncation_side", "must be right or left"),
                (self.pack_strategy in ("best_fit", "sequential"), "pack_strategy", "must be best_fit or sequential"),
                (self.max_length >= 2, "max_length", "must be at least 2"),
                (self.limit is None or self.limit > 0, "limit", "must be positive"),
                (self.pad_to_multiple_of is None or self.pad_to_multiple_of > 0, "pad_to_multiple_of", "must be > 0"),
                (
                    not (self.packing and self.format in PREFERENCE_FORMATS),
                    "packing",
                    "is for SFT data, not preference pairs; leave it off with format preference",
                ),
                (
                    not (self.padding_free and self.format in PREFERENCE_FORMATS),
                    "padding_free",
                    "is for SFT data, not preference pairs; leave it off with format preference",
                ),
                (
                    not (self.padding_free and self.pad_to_multiple_of),
                    "padding_free",
                    "pads nothing, so pad_to_multiple_of cannot apply; leave one of them out",
                ),
                (
                    _valid_holdout(self.validation_size),
                    "validation_size",
                    "must be an int >= 0 or a float in [0, 1)",
                ),
            ],
        )


def _valid_holdout(size: int | float) -> bool:
    if isinstance(size, bool):
        return False
    if isinstance(size, int):
        return size >= 0
    return isinstance(size, float) and 0.0 <= size < 1.0


__all__ = ["DataConfig"]
