"""The one tokenisation pipeline of supervised examples and preference pairs; only the rendering differs.

:func:`tokenize_examples` does what every kind of example needs (special-text check, tokenisation in batches, the
over-long policy, the drop rules, the counts of a :class:`TokenizeReport`); a :class:`Rendering` supplies what differs:
the texts of an example, how an over-long one is shortened, and the item that is kept
(:class:`~elmtune.datasets.supervised.SFTRendering`, :class:`~elmtune.datasets.preference.PreferenceRendering`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

import numpy as np

from elmtune.datasets.encoding import IGNORE_INDEX, OVERLONG, SIDES, Overlong, encode_rendered
from elmtune.datasets.errors import DataRowError
from elmtune.datasets.examples import PreferenceExample, SFTExample
from elmtune.datasets.templates import TEMPLATES, Rendered

_CHUNK = 1024


def check_tokenize_choices(template: str, overlong: str, side_field: str, side: str) -> None:
    """Check the choices every tokenisation config shares: template, overlong policy, truncation side.

    Args:
        template: A template name (``auto``, ``alpaca``, ``chat``, ...).
        overlong: What to do with overlong examples.
        side_field: The config field that holds ``side`` (named in the error).
        side: ``left`` or ``right``.

    Raises:
        ValueError: A value is not one of its choices; the message lists them.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {', '.join(OVERLONG)}, got {overlong!r}")
    if side not in SIDES:
        raise ValueError(f"{side_field} must be one of {', '.join(SIDES)}, got {side!r}")


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


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=total < 5 * _CHUNK, leave=False)


Encoded = tuple[np.ndarray, np.ndarray]
"""One tokenised text: (L,) int32 ``input_ids`` (BOS first) and (L,) int32 ``labels`` (-100 where no target)."""
ExampleT = TypeVar("ExampleT", SFTExample, PreferenceExample, contravariant=True)
ItemT = TypeVar("ItemT", covariant=True)


class Rendering(Protocol[ExampleT, ItemT]):
    """What differs between kinds of examples in :func:`tokenize_examples`: texts, shortening, the kept item."""

    @property
    def max_length(self) -> int:
        """Longest sequence in tokens, BOS and EOS included."""
        ...

    @property
    def overlong(self) -> Overlong:
        """``truncate`` (with :meth:`shorten`), ``drop`` or ``error``."""
        ...

    @property
    def train_on_prompt(self) -> bool:
        """Every token but BOS is a target."""
        ...

    def render(self, example: ExampleT, eos_token: str) -> Sequence[Rendered]:
        """The texts of one example (one for a supervised example, chosen and rejected for a pair)."""
        ...

    def shorten(self, sequences: list[Encoded]) -> list[Encoded]:
        """The sequences of an over-long example cut to fit ``max_length``."""
        ...

    def build(self, example: ExampleT, sequences: list[Encoded], truncated: bool) -> ItemT:
        """The kept item made of an example's final sequences."""
        ...


def _valid(examples: Sequence[Any], tokenizer: Any, skip_invalid: bool, counts: dict[str, int]) -> list[Any]:
    """The examples without special-token text; the others raise, or are counted as ``invalid`` and skipped."""
    valid = []
    for example in examples:
        try:
            check_special_text(example, tokenizer)
        except DataRowError:
            if not skip_invalid:
                raise
            counts["invalid"] += 1
            continue
        valid.append(example)
    return valid


def _kept(
    example: Any, sequences: list[Encoded], rendering: Rendering[Any, ItemT], counts: dict[str, int]
) -> ItemT | None:
    """Apply the length policy and the drop rules to one example's sequences; None when it is dropped."""
    length = max(len(ids) for ids, _ in sequences)
    counts["longest"] = max(counts["longest"], length)
    was_cut = length > rendering.max_length
    if was_cut:
        if rendering.overlong == "error":
            too_long = f"{length} tokens, more than max_length {rendering.max_length}"
            raise DataRowError(example.where or "example", too_long)
        if rendering.overlong == "drop":
            counts["dropped_overlong"] += 1
            return None
        sequences = rendering.shorten(sequences)
    targets = [int((labels != IGNORE_INDEX).sum()) for _, labels in sequences]
    if min(targets) == 0:
        counts["dropped_no_target"] += 1
        return None
    first = sequences[0][0]
    if len(sequences) > 1 and all(np.array_equal(ids, first) for ids, _ in sequences[1:]):
        counts["dropped_identical"] += 1
        return None
    counts["truncated"] += was_cut
    counts["tokens"] += sum(len(ids) for ids, _ in sequences)
    counts["target_tokens"] += sum(targets)
    return rendering.build(example, sequences, was_cut)


def tokenize_examples(
    examples: Iterable[ExampleT], tokenizer: Any, rendering: Rendering[ExampleT, ItemT], *, skip_invalid: bool = False
) -> tuple[list[ItemT], TokenizeReport]:
    """The one tokenisation pipeline: check, render, tokenise, apply the length policy, count.

    Per chunk of examples: refuse special-token text (or count and skip it with ``skip_invalid``), render each
    example into its texts, tokenise all texts in one call, then per example: an over-long one (its longest
    sequence over ``max_length``) raises, is dropped or is shortened; one with a sequence without targets is dropped,
    and so is one whose sequences are all the same tokens (a pair with nothing to prefer).

    Args:
        examples: Typed examples of the kind ``rendering`` renders.
        tokenizer: A fast tokenizer.
        rendering: The part that differs between kinds of examples.
        skip_invalid: Skip examples whose text holds a special-token string instead of raising.

    Returns:
        The kept items in input order and a :class:`TokenizeReport` (``tokens`` counts every sequence of an item).

    Raises:
        DataRowError: Special-token text (unless ``skip_invalid``), or an over-long example with
            ``overlong="error"``.
    """
    examples = list(examples)
    eos = tokenizer.eos_token or "</s>"
    kept: list[ItemT] = []
    counts = {f.name: 0 for f in fields(TokenizeReport) if f.name not in ("examples", "kept")}
    with _progress(len(examples), "tokenize") as bar:
        for start in range(0, len(examples), _CHUNK):
            chunk = _valid(examples[start : start + _CHUNK], tokenizer, skip_invalid, counts)
            texts = [rendering.render(e, eos) for e in chunk]
            flat = [text for example_texts in texts for text in example_texts]
            encoded = encode_rendered(flat, tokenizer, train_on_prompt=rendering.train_on_prompt)
            position = 0
            for example, example_texts in zip(chunk, texts, strict=True):
                sequences = encoded[position : position + len(example_texts)]
                position += len(example_texts)
                item = _kept(example, sequences, rendering, counts)
                if item is not None:
                    kept.append(item)
            bar.update(min(_CHUNK, len(examples) - start))
    return kept, TokenizeReport(examples=len(examples), kept=len(kept), **counts)
