"""Batch sizing: fixed rows per batch, or an automatic token budget that halves on out-of-memory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from elmtune.errors import ElmtuneError
from elmtune.evaluation.config import BatchSize

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

AUTO_TOKEN_BUDGET = {"cpu": 4096, "default": 32768}
"""Tokens per forward pass that ``auto`` starts from (padded rows x width), per device type."""

MAX_AUTO_ROWS = 256


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an out-of-memory error of CUDA, MPS or the CPU allocator."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class Batcher:
    """Cuts length-sorted work into batches and retries a batch with a smaller size after out-of-memory.

    With a fixed ``batch_size`` every batch has that many items (the last may be shorter), and out-of-memory is an
    error. With ``"auto"`` a batch holds as many items as fit a token budget (items x width of the longest, which is
    the first, since items come longest first), or with ``packed`` the sum of the items' widths (the caller packs
    them without padding); the budget halves on out-of-memory and stays halved.
    """

    def __init__(
        self, batch_size: BatchSize, device: torch.device, token_budget: int | None = None, *, packed: bool = False
    ) -> None:
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or 'auto', not {batch_size!r}")
        self.batch_size = batch_size
        self.device = device
        self.token_budget = token_budget or AUTO_TOKEN_BUDGET.get(device.type, AUTO_TOKEN_BUDGET["default"])
        self.packed = packed
        self.largest_batch = 0

    def _take(self, widths: Sequence[int], start: int) -> int:
        if self.batch_size != "auto":
            return min(self.batch_size, len(widths) - start)
        if self.packed:
            end, total = start, 0
            while (
                end < len(widths)
                and end - start < MAX_AUTO_ROWS
                and (end == start or total + widths[end] <= self.token_budget)
            ):
                total += widths[end]
                end += 1
            return end - start
        rows = max(1, min(MAX_AUTO_ROWS, self.token_budget // max(1, widths[start])))
        return min(rows, len(widths) - start)

    def run(self, items: Sequence[T], widths: Sequence[int], step: Callable[[Sequence[T]], R]) -> list[R]:
        """Apply ``step`` to consecutive batches of ``items`` (sorted longest first) and return its results in order.

        Raises:
            ElmtuneError: Out of memory with a fixed batch size, or with a single item.
        """
        results: list[R] = []
        start = 0
        while start < len(items):
            count = self._take(widths, start)
            try:
                results.append(step(items[start : start + count]))
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                _free_memory(self.device)
                if self.batch_size != "auto":
                    raise ElmtuneError(
                        f"out of memory at batch size {self.batch_size}; use a smaller --batch-size or 'auto'"
                    ) from None
                if count == 1:
                    raise ElmtuneError(
                        f"out of memory on a single row of {widths[start]} tokens; use a smaller model or dtype"
                    ) from None
                used = sum(widths[start : start + count]) if self.packed else count * widths[start]
                self.token_budget = max(1, used // 2)
                logger.info("out of memory with %d rows; automatic token budget now %d", count, self.token_budget)
                continue
            self.largest_batch = max(self.largest_batch, count)
            start += count
        return results
