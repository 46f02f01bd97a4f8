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
from elmtune.datasets.encoding import IGNORE_INDEX, Overlong
from elmtune.datasets.examples import PreferenceExample
from elmtune.datasets.templates import Rendered, render_preference
from elmtune.datasets.tokenize_pipeline import Encoded, TokenizeReport, check_tokenize_choices, tokenize_examples
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
        check_tokenize_choices(self.template, self.overlong, "prompt_truncation_side", self.prompt_truncation_side)


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


@dataclass(frozen=True)
class PreferenceRendering:
    """Preference pairs in :func:`~elmtune.datasets.tokenize_pipeline.tokenize_examples`: chosen and rejected texts."""

    config: PreferenceTokenizeConfig

    @property
    def train_on_prompt(self) -> bool:
        """Never: the prompt of a pair is not a target."""
        return False

    @property
    def max_length(self) -> int:
        """See :class:`PreferenceTokenizeConfig`."""
        return self.config.max_length

    @property
    def overlong(self) -> Overlong:
        """See :class:`PreferenceTokenizeConfig`."""
        return self.config.overlong

    def render(self, example: PreferenceExample, eos_token: str) -> tuple[Rendered, Rendered]:
        """Prompt + chosen and prompt + rejected (see :func:`~elmtune.datasets.templates.render_preference`)."""
        return render_preference(example, self.config.template, eos_token=eos_token)

    def shorten(self, sequences: list[Encoded]) -> list[Encoded]:
        """Both sequences cut as the module docstring describes."""
        return [_shorten(ids, labels, self.config, cut_prompt=True) for ids, labels in sequences]

    def build(self, example: PreferenceExample, sequences: list[Encoded], truncated: bool) -> TokenizedPair:
        """A :class:`TokenizedPair`."""
        (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = sequences
        return TokenizedPair(chosen_ids, chosen_labels, rejected_ids, rejected_labels, example.where, truncated)


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
        The kept pairs in input order and a :class:`~elmtune.datasets.tokenize_pipeline.TokenizeReport` (``tokens``
        counts both sequences of each pair).

    Raises:
        DataRowError: Special-token text (unless ``skip_invalid``), or an over-long pair with ``overlong="error"``.
    """
    rendering = PreferenceRendering(config or PreferenceTokenizeConfig())
    return tokenize_examples(examples, tokenizer, rendering, skip_invalid=skip_invalid)


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
