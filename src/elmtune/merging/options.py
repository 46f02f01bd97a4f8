"""How to merge: :class:`MergeOptions` and the merge check's :class:`VerifyBudget`, without importing torch.

Reading and checking merge settings (``elmtune merge --config``, a build recipe's ``merge`` stage) stays cheap: dtype
names are checked against a tuple of names here and turned into torch dtypes only where the merge runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from elmtune.errors import ElmtuneError

DEFAULT_MAX_SHARD_SIZE = "5GB"
OUTPUT_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
"""The output dtype names a merge writes (``auto``/None keeps the base's)."""
_DTYPE_ALIASES: dict[str, str] = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}

PROBE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog, and then it runs back into the forest.",
    "Question: Which is heavier, a kilogram of feathers or a kilogram of iron?\nAnswer:",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on its surface.",
    "To bake bread you need flour, water, salt and yeast. First, mix the ingredients in a large bowl.",
    "La tour Eiffel se trouve à Paris. Elle a été construite pour l'Exposition universelle de 1889.",
    "The sum of the first ten positive integers is 55, and the sum of their squares is 385.",
)
"""Probe prompts: prose, a question, an instruction, code, facts, a recipe, French and arithmetic."""


class MergeError(ElmtuneError):
    """A merge that cannot be done as asked (wrong base, unsupported adapter, bad option)."""


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"2GiB"`` -> 2 * 2**30, ``"500MB"``, ``"123"`` (bytes).

    Raises:
        ValueError: An unreadable size.
    """
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("KMGTIB")
    unit = value[len(number) :]
    try:
        size = int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise ValueError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB") from None
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


def output_dtype_name(dtype: Any) -> str | None:
    """The short name (``fp32``, ``bf16``, ``fp16``) of an output dtype; None for None or ``auto`` (the base's).

    Args:
        dtype: A name (``bf16``, ``bfloat16``, ``half``..., case-insensitive), ``auto``, None, or a torch dtype.

    Raises:
        ValueError: Any other name.
    """
    if dtype is None or dtype == "auto":
        return None
    text = str(dtype)
    name = text.removeprefix("torch.").lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in OUTPUT_DTYPES:
        known = ", ".join(sorted([*OUTPUT_DTYPES, *_DTYPE_ALIASES]))
        raise ValueError(f"unknown dtype {text!r}; use one of {known} or auto")
    return name


@dataclass(frozen=True)
class VerifyBudget:
    """How far a merged model may drift from its reference (None: not checked).

    Attributes:
        max_abs_diff: Largest allowed absolute logit difference.
        max_kl: Largest allowed mean KL divergence (nats).
        min_top1: Smallest allowed top-1 agreement (0..1).
    """

    max_abs_diff: float | None = None
    max_kl: float | None = None
    min_top1: float | None = None

    def __post_init__(self) -> None:
        if self.max_abs_diff is None and self.max_kl is None and self.min_top1 is None:
            raise ValueError("a budget needs at least one of max_abs_diff, max_kl and min_top1")
        for name in ("max_abs_diff", "max_kl"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise ValueError(f"min_top1 must be in [0, 1], got {self.min_top1}")

    @classmethod
    def for_dtype(cls, dtype: Any) -> VerifyBudget:
        """The budget of an output dtype (name or torch dtype): fp32 1e-4 absolute; bf16/fp16 top-1 >= 99 %, KL 1e-3."""
        if output_dtype_name(dtype) == "fp32":
            return cls(max_abs_diff=1e-4)
        return cls(max_kl=1e-3, min_top1=0.99)

    def to_dict(self) -> dict[str, float]:
        """The limits that are set, by name (as the merge report writes them)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class MergeOptions:
    """How to merge.

    Attributes:
        dtype: Output dtype (``fp32``, ``bf16``, ``fp16``...); None or ``auto``: the base's.
        untie_embeddings: Write a separate ``lm_head.weight`` (the base embedding) so the merged model equals the
            unmerged adapter even when the embedding is adapted.
        low_memory: Read the base tensor by tensor from its safetensors files instead of loading it.
        verify: Run the merge check (strongly recommended).
        budget: Override the output dtype's check budget.
        max_shard_size: Largest safetensors file (bytes or ``"5GB"``); above it the checkpoint is sharded.
        overwrite: Replace an existing output directory.
        device: Where the check computes.
        progress: Show a progress bar.
        probe_texts: The check's prompts.
    """

    dtype: str | None = None
    untie_embeddings: bool = False
    low_memory: bool = False
    verify: bool = True
    budget: VerifyBudget | None = None
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    overwrite: bool = False
    device: str = "cpu"
    progress: bool = False
    probe_texts: tuple[str, ...] = field(default=PROBE_TEXTS)

    def __post_init__(self) -> None:
        try:
            output_dtype_name(self.dtype)
            object.__setattr__(self, "max_shard_size", parse_size(self.max_shard_size))
        except ValueError as err:
            raise MergeError(str(err)) from None
        if not self.probe_texts:
            raise MergeError("probe_texts is empty")

    @property
    def dtype_name(self) -> str | None:
        """The output dtype's short name (``fp32``, ``bf16``, ``fp16``); None: the base's."""
        return output_dtype_name(self.dtype)


__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "OUTPUT_DTYPES",
    "PROBE_TEXTS",
    "MergeError",
    "MergeOptions",
    "VerifyBudget",
    "output_dtype_name",
    "parse_size",
]
