"""Preference pairs: prompt + chosen and prompt + rejected, tokenised with prompt-masked labels, and their collator.

Each sequence is tokenised whole (see :mod:`elmtune.datasets.encoding`); its prompt is every token before the
first target token. Length handling follows TRL's DPO convention: when the longer sequence exceeds ``max_length``,
the prompt is first cut to ``max_prompt_length`` (keeping its end, and BOS), then the replies are cut from the right.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from elmtune.datasets.collate import pad_right, padded_length
from elmtune.datasets.encoding import (
    IGNORE_INDEX,
    OVERLONG,
    SIDES,
    Overlong,
    TokenizeReport,
    check_special_text,
    encode_rendered,
)
from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import PreferenceExample
from elmtune.datasets.templates import TEMPLATES, render_preference
from elmtune.errors import UsageError
from elmtune.models import PAD_TOKEN_ID


@dataclass(frozen=True)
class PreferenceTokenizeConfig:
    """How preference pairs become token ids and labels.

    Attributes:
        max_length: Longest sequence (prompt + reply, BOS and EOS included); Apple's recipe uses 1024.
        max_prompt_length: Longest prompt once a pair must be shortened; Apple's recipe uses 512.
        template: ``auto``/``chat`` (OpenELM-Instruct format), ``alpaca`` or ``plain``.
        overlong: ``truncate`` as described in the module docstring, ``drop`` the pair, or raise (``error``).
        prompt_truncation_side: ``left`` keeps BOS and the end of the prompt (next to the reply); ``right`` keeps
            its beginning.
    """

    max_length: int = 1024
    max_prompt_length: int = 512
    template: str = "auto"
    overlong: Overlong = "truncate"
    prompt_truncation_side: Literal["left", "right"] = "left"

    def __post_init__(self) -> None:
        if self.max_prompt_length < 1 or self.max_length <= self.max_prompt_length:
            raise UsageError(
                f"preference pairs need 1 <= max_prompt_length < max_length, got max_prompt_length "
                f"{self.max_prompt_length} and max_length {self.max_length}: pass --max-prompt-length below "
                "--max-length (data.max_prompt_length in a recipe; Apple's recipe uses 512 of 1024)"
            )
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")
        if self.overlong not in OVERLONG:
            raise ValueError(f"overlong must be one of {', '.join(OVERLONG)}, got {self.overlong!r}")
        if self.prompt_truncation_side not in SIDES:
            raise ValueError(f"prompt_truncation_side must be left or right, got {self.prompt_truncation_side!r}")


@dataclass(frozen=True, eq=False)
class TokenizedPair:
    """One tokenised preference pair.

    Attributes:
        chosen_input_ids: (Lc,) int32 ids of BOS + prompt + chosen reply + EOS (+ template tail).
        chosen_labels: (Lc,) int32; -100 on the prompt, the tail and BOS.
        rejected_input_ids: (Lr,) int32, same layout with the rejected reply.
        rejected_labels: (Lr,) int32.
        where: The source row.
        truncated: Whether either sequence was shortened.
    """

    chosen_input_ids: np.ndarray
    chosen_labels: np.ndarray
    rejected_input_ids: np.ndarray
    rejected_labels: np.ndarray
    where: str = ""
    truncated: bool = False

    def __len__(self) -> int:
        """The longer of the two sequences (what a batch must hold)."""
        return max(len(self.chosen_input_ids), len(self.rejected_input_ids))


def prompt_length(labels: np.ndarray) -> int:
    """Tokens before the first target (BOS included)."""
    targets = np.flatnonzero(labels != IGNORE_INDEX)
    return int(targets[0]) if len(targets) else len(labels)


def _shorten(
    ids: np.ndarray, labels: np.ndarray, config: PreferenceTokenizeConfig, cut_prompt: bool
) -> tuple[np.ndarray, np.ndarray]:
    n_prompt = prompt_length(labels)
    if cut_prompt and n_prompt > config.max_prompt_length:
        keep = config.max_prompt_length
        if config.prompt_truncation_side == "left":  # BOS + the prompt's last keep - 1 tokens
            index = np.r_[0, np.arange(n_prompt - keep + 1, len(ids))]
        else:
            index = np.r_[np.arange(keep), np.arange(n_prompt, len(ids))]
        ids, labels = ids[index], labels[index]
    return ids[: config.max_length], labels[: config.max_length]


def tokenize_preference(
    examples: Iterable[PreferenceExample],
    tokenizer: Any,
    config: PreferenceTokenizeConfig | None = None,
    *,
    skip_invalid: bool = False,
) -> tuple[list[TokenizedPair], TokenizeReport]:
    """Render and tokenise preference pairs with prompt-masked labels.

    Args:
        examples: Typed pairs (from :func:`elmtune.datasets.load_preference_examples`).
        tokenizer: A fast tokenizer.
        config: Length policy and template; defaults to :class:`PreferenceTokenizeConfig()`.
        skip_invalid: Skip pairs whose text holds a special-token string instead of raising.

    Returns:
        The kept pairs in input order and a :class:`~elmtune.datasets.encoding.TokenizeReport` (``tokens`` counts
        both sequences of each pair).

    Raises:
        DataRowError: Special-token text (unless ``skip_invalid``), or an over-long pair with ``overlong="error"``.
    """
    config = config or PreferenceTokenizeConfig()
    eos = tokenizer.eos_token or "</s>"
    examples = list(examples)
    valid, invalid = [], 0
    for example in examples:
        try:
            check_special_text(example, tokenizer)
            valid.append(example)
        except DataRowError:
            if not skip_invalid:
                raise
            invalid += 1
    rendered = [render_preference(e, config.template, eos_token=eos) for e in valid]
    encoded = encode_rendered([r for pair in rendered for r in pair], tokenizer)
    pairs: list[TokenizedPair] = []
    truncated = dropped_overlong = dropped_no_target = dropped_identical = longest = tokens = targets = 0
    for i, example in enumerate(valid):
        (c_ids, c_labels), (r_ids, r_labels) = encoded[2 * i], encoded[2 * i + 1]
        length = max(len(c_ids), len(r_ids))
        longest = max(longest, length)
        was_cut = length > config.max_length
        if was_cut:
            if config.overlong == "error":
                raise DataRowError(
                    example.where or "example", f"{length} tokens, more than max_length {config.max_length}"
                )
            if config.overlong == "drop":
                dropped_overlong += 1
                continue
            c_ids, c_labels = _shorten(c_ids, c_labels, config, cut_prompt=True)
            r_ids, r_labels = _shorten(r_ids, r_labels, config, cut_prompt=True)
        n_c, n_r = int((c_labels != IGNORE_INDEX).sum()), int((r_labels != IGNORE_INDEX).sum())
        if n_c == 0 or n_r == 0:
            dropped_no_target += 1
            continue
        if len(c_ids) == len(r_ids) and bool((np.asarray(c_ids) == np.asarray(r_ids)).all()):
            dropped_identical += 1
            continue
        truncated += was_cut
        tokens += len(c_ids) + len(r_ids)
        targets += n_c + n_r
        pairs.append(TokenizedPair(c_ids, c_labels, r_ids, r_labels, example.where, was_cut))
    report = TokenizeReport(
        examples=len(examples),
        kept=len(pairs),
        truncated=truncated,
        dropped_overlong=dropped_overlong,
        dropped_no_target=dropped_no_target,
        invalid=invalid,
        dropped_identical=dropped_identical,
        tokens=tokens,
        target_tokens=targets,
        longest=longest,
    )
    return pairs, report


def collate_preference(
    pairs: Sequence[TokenizedPair], *, pad_token_id: int = PAD_TOKEN_ID, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad pairs into one batch; chosen and rejected share one length so they can be concatenated.

    Args:
        pairs: Tokenised pairs.
        pad_token_id: Id written on padding.
        pad_to_multiple_of: Round the length up.

    Returns:
        ``chosen_input_ids``, ``chosen_attention_mask``, ``chosen_labels``, ``rejected_input_ids``,
        ``rejected_attention_mask``, ``rejected_labels``: each (B, L) int64, L the longest of all 2B sequences.
        ``torch.cat([chosen_x, rejected_x])`` gives the (2B, L) batch of a single forward pass.
    """
    length = padded_length([len(p) for p in pairs], pad_to_multiple_of)
    batch: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        ids = [getattr(p, f"{side}_input_ids") for p in pairs]
        batch[f"{side}_input_ids"] = pad_right(ids, length, pad_token_id)  # (B, L)
        mask = torch.zeros((len(pairs), length), dtype=torch.long)  # (B, L)
        for i, row in enumerate(ids):
            mask[i, : len(row)] = 1
        batch[f"{side}_attention_mask"] = mask
        batch[f"{side}_labels"] = pad_right([getattr(p, f"{side}_labels") for p in pairs], length, IGNORE_INDEX)
    return batch
