"""Tokenisation with loss masks: the whole rendered text is tokenised once, labels come from character offsets.

Contract: ``input_ids == [BOS] + tokenizer(text, add_special_tokens=False)`` for the rendered ``text``, which for the
bundled tokenizer is exactly ``tokenizer(text)["input_ids"]``: nothing is tokenised piecewise, so no token differs
from what the model sees at inference. A token is a target when any of its characters lies in a target segment; a
token straddling the boundary (``"▁the"`` after the 16 spaces of the Alpaca prompt) therefore counts as target, the
same convention lm-eval uses when it moves a context's trailing spaces into the continuation. BOS is never a target.
Labels are aligned with ``input_ids`` (the model shifts them), -100 where there is no target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import PreferenceExample, SFTExample
from elmtune.datasets.templates import TEMPLATES, Rendered, render_sft
from elmtune.errors import ElmtuneError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
Overlong = Literal["truncate", "drop", "error"]
TruncationSide = Literal["right", "left"]
OVERLONG: tuple[str, ...] = get_args(Overlong)
SIDES: tuple[str, ...] = get_args(TruncationSide)
_CHUNK = 1024


@dataclass(frozen=True)
class TokenizeConfig:
    """How supervised examples become token ids and labels.

    Attributes:
        max_length: Longest sequence in tokens, BOS and EOS included.
        template: ``auto``, ``alpaca``, ``chat`` or ``plain`` (see :mod:`elmtune.datasets.templates`).
        train_on_prompt: Train on every token, prompt included (Apple's commonsense recipe); default: responses only
            (every assistant turn for chat).
        overlong: What to do with an example longer than ``max_length``: ``truncate`` it, ``drop`` it, or raise
            (``error``).
        truncation_side: ``right`` keeps the beginning; ``left`` keeps BOS and the end.
        system_prompt: Chat template only: a system turn put first in conversations that have none.
    """

    max_length: int = 2048
    template: str = "auto"
    train_on_prompt: bool = False
    overlong: Overlong = "truncate"
    truncation_side: TruncationSide = "right"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        if self.overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {', '.join(OVERLONG)}, got {self.overlong!r}")
        if self.truncation_side not in SIDES:
            raise ValueError(f"truncation_side must be one of {', '.join(SIDES)}, got {self.truncation_side!r}")


@dataclass(frozen=True, eq=False)
class TokenizedExample:
    """One tokenised supervised example.

    Attributes:
        input_ids: (L,) int32 token ids, BOS first.
        labels: (L,) int32 targets aligned with ``input_ids``; -100 where there is no loss.
        where: The source row.
        truncated: Whether it was cut to ``max_length``.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    where: str = ""
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_targets(self) -> int:
        """Tokens that carry a loss."""
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class TokenizeReport:
    """Counts from tokenisation.

    Attributes:
        examples: Examples given.
        kept: Examples returned.
        truncated: Kept examples cut to ``max_length``.
        dropped_overlong: Examples dropped for length (``overlong="drop"``).
        dropped_no_target: Examples with no target token left after truncation (always dropped).
        invalid: Examples skipped because their text holds a special-token string (``skip_invalid``).
        dropped_identical: Preference pairs dropped because chosen and rejected are the same tokens (nothing to
            prefer: the loss would be ln 2 with a zero gradient).
        tokens: Tokens in the kept examples.
        target_tokens: Target tokens in the kept examples.
        longest: The longest example before truncation, in tokens.
    """

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_target: int = 0
    invalid: int = 0
    dropped_identical: int = 0
    tokens: int = 0
    target_tokens: int = 0
    longest: int = 0


def check_fast_tokenizer(tokenizer: Any) -> None:
    """Offsets need a fast (Rust) tokenizer.

    Raises:
        ElmtuneError: For a slow tokenizer.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ElmtuneError("elmtune needs a fast tokenizer (tokenizer.json) to compute loss masks from offsets")


def check_special_text(example: SFTExample | PreferenceExample, tokenizer: Any) -> None:
    """Refuse text that holds a special-token string, which would tokenise as that token (``</s>`` as EOS).

    Raises:
        DataRowError: Naming the field and the token.
    """
    specials = [s for s in getattr(tokenizer, "all_special_tokens", []) if s]
    for field, text in example.text_fields():
        for special in specials:
            if special in text:
                raise DataRowError(
                    example.where or "example",
                    f"field '{field}' contains the special-token text {special!r}, which would be read as that token; "
                    "clean the data or skip such rows (skip_invalid)",
                )


def target_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Which tokens overlap a target character span.

    Args:
        offsets: (T,) ``(start, end)`` character offsets of the tokens; a zero-width token counts as its start
            character.
        spans: Target ``[start, end)`` character ranges.

    Returns:
        (T,) bool mask.
    """
    if len(offsets) == 0:
        return np.zeros(0, dtype=bool)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # (T, 2)
    starts, ends = off[:, 0], np.maximum(off[:, 1], off[:, 0] + 1)
    mask = np.zeros(len(off), dtype=bool)
    for a, b in spans:
        mask |= (starts < b) & (ends > a)
    return mask


def encode_rendered(
    rendered: Sequence[Rendered], tokenizer: Any, *, train_on_prompt: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenise rendered texts in one batch call and derive their labels.

    Args:
        rendered: Rendered examples.
        tokenizer: A fast tokenizer.
        train_on_prompt: Every token but BOS is a target.

    Returns:
        ``(input_ids, labels)`` int32 arrays per example, untruncated; ``input_ids`` start with BOS.
    """
    check_fast_tokenizer(tokenizer)
    encoded = tokenizer(
        [r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
    )
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    out = []
    for r, ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        input_ids = np.asarray(bos + list(ids), dtype=np.int32)
        if train_on_prompt:
            is_target = np.ones(len(ids), dtype=bool)
        else:
            is_target = target_mask(offsets, r.target_spans())
        is_target = np.concatenate([np.zeros(len(bos), dtype=bool), is_target])
        labels = np.where(is_target, input_ids, IGNORE_INDEX).astype(np.int32)
        out.append((input_ids, labels))
    return out


def truncate(ids: np.ndarray, labels: np.ndarray, max_length: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Cut a sequence to ``max_length`` tokens: ``right`` keeps the start, ``left`` keeps BOS (the first token) and
    the end."""
    if len(ids) <= max_length:
        return ids, labels
    if side == "right":
        return ids[:max_length], labels[:max_length]
    keep = max_length - 1
    return np.concatenate([ids[:1], ids[-keep:]]), np.concatenate([labels[:1], labels[-keep:]])


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=total < 5 * _CHUNK, leave=False)


def tokenize_sft(
    examples: Iterable[SFTExample],
    tokenizer: Any,
    config: TokenizeConfig | None = None,
    *,
    skip_invalid: bool = False,
) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Render and tokenise supervised examples, with labels, truncation and counts.

    Args:
        examples: Typed examples (from :func:`elmtune.datasets.load_sft_examples`).
        tokenizer: A fast tokenizer (:func:`elmtune.models.load_tokenizer`).
        config: Template, masking and length policy; defaults to :class:`TokenizeConfig()`.
        skip_invalid: Skip examples whose text holds a special-token string instead of raising.

    Returns:
        The kept examples in input order, and a :class:`TokenizeReport` (truncated examples are counted there and
        logged).

    Raises:
        DataRowError: Special-token text in a row (unless ``skip_invalid``), or an over-long example with
            ``overlong="error"``.
        ValueError: A template that cannot render an example.
    """
    config = config or TokenizeConfig()
    examples = list(examples)
    eos = tokenizer.eos_token or "</s>"
    kept: list[TokenizedExample] = []
    counts = dict.fromkeys(
        ("truncated", "dropped_overlong", "dropped_no_target", "invalid", "tokens", "target_tokens", "longest"), 0
    )
    with _progress(len(examples), "tokenize") as bar:
        for start in range(0, len(examples), _CHUNK):
            chunk = []
            for example in examples[start : start + _CHUNK]:
                try:
                    check_special_text(example, tokenizer)
                except DataRowError:
                    if not skip_invalid:
                        raise
                    counts["invalid"] += 1
                    continue
                chunk.append(example)
            rendered = [
                render_sft(e, config.template, eos_token=eos, system_prompt=config.system_prompt) for e in chunk
            ]
            for example, (ids, labels) in zip(
                chunk, encode_rendered(rendered, tokenizer, train_on_prompt=config.train_on_prompt), strict=True
            ):
                counts["longest"] = max(counts["longest"], len(ids))
                was_cut = len(ids) > config.max_length
                if was_cut:
                    if config.overlong == "error":
                        raise DataRowError(
                            example.where or "example", f"{len(ids)} tokens, more than max_length {config.max_length}"
                        )
                    if config.overlong == "drop":
                        counts["dropped_overlong"] += 1
                        continue
                    ids, labels = truncate(ids, labels, config.max_length, config.truncation_side)
                item = TokenizedExample(ids, labels, example.where, was_cut)
                if item.num_targets == 0:
                    counts["dropped_no_target"] += 1
                    continue
                counts["truncated"] += was_cut
                counts["tokens"] += len(item)
                counts["target_tokens"] += item.num_targets
                kept.append(item)
            bar.update(min(_CHUNK, len(examples) - start))
    report = TokenizeReport(examples=len(examples), kept=len(kept), **counts)
    if report.truncated or report.dropped_overlong or report.dropped_no_target:
        logger.warning(
            "max_length %d: %d example(s) truncated (%s side), %d dropped as too long, %d dropped with no target left",
            config.max_length,
            report.truncated,
            config.truncation_side,
            report.dropped_overlong,
            report.dropped_no_target,
        )
    return kept, report
