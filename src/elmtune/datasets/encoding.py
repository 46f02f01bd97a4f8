"""Tokenisation with loss masks: the whole rendered text is tokenised once, labels come from character offsets.

Contract: ``input_ids == [BOS] + tokenizer(text, add_special_tokens=False)`` for the rendered ``text``, which for the
bundled tokenizer is exactly ``tokenizer(text)["input_ids"]``: nothing is tokenised piecewise, so no token differs
from what the model sees at inference. A token is a target when any of its characters lies in a target segment; a
token straddling the boundary (``"▁the"`` after the 16 spaces of the Alpaca prompt) therefore counts as target, the
same convention lm-eval uses when it moves a context's trailing spaces into the continuation. BOS is never a target.
Labels are aligned with ``input_ids`` (the model shifts them), -100 where there is no target.

The pipeline that applies this to whole data sets is :mod:`elmtune.datasets.tokenize_pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np

from elmtune.datasets.templates import Rendered
from elmtune.errors import ElmtuneError

IGNORE_INDEX = -100
Overlong = Literal["truncate", "drop", "error"]
TruncationSide = Literal["right", "left"]
OVERLONG: tuple[str, ...] = get_args(Overlong)
SIDES: tuple[str, ...] = get_args(TruncationSide)


def check_fast_tokenizer(tokenizer: Any) -> None:
    """Offsets need a fast (Rust) tokenizer.

    Raises:
        ElmtuneError: For a slow tokenizer.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ElmtuneError("elmtune needs a fast tokenizer (tokenizer.json) to compute loss masks from offsets")


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
    """Cut a sequence to ``max_length`` tokens: ``right`` keeps the start, ``left`` keeps BOS and the end.

    Args:
        ids: (L,) token ids.
        labels: (L,) labels aligned with ``ids``.
        max_length: The longest sequence kept.
        side: ``right`` or ``left``.

    Returns:
        The cut ``(ids, labels)``, or the inputs when they fit.
    """
    if len(ids) <= max_length:
        return ids, labels
    if side == "right":
        return ids[:max_length], labels[:max_length]
    keep = max_length - 1
    return np.concatenate([ids[:1], ids[-keep:]]), np.concatenate([labels[:1], labels[-keep:]])
