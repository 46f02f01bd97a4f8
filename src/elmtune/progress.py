"""Progress of a counted job (evaluation rows, merged or exported tensors) on stderr, wherever stderr goes.

On a terminal it is a live bar (tqdm). Anywhere else (CI logs, ``nohup``, a pipe, a cluster's log file) a bar would
print nothing useful, so plain lines are written instead, sparsely: one when another tenth of the job is done
(unless one was written less than :data:`MIN_GAP_S` seconds before), one every :data:`INTERVAL_S` seconds while a
tenth takes longer than that, and a last one when the job ends, if any was written before it. A job that ends within
:data:`MIN_GAP_S` seconds writes nothing::

    eval boolq: 327/3270 questions (10%), 12.3 questions/s, 27s elapsed, eta 3m59s

``enabled=False`` (the ``--no-progress`` flag, ``progress: false`` in a config) silences both.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

INTERVAL_S = 10.0
"""Longest quiet spell of a plain-line progress report, in seconds."""

MIN_GAP_S = 2.0
"""Shortest gap between two plain lines (and before the first), in seconds."""

STEPS = 10
"""A plain line is due each time another 1/STEPS of the job is done."""

Item = TypeVar("Item")


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1m15s"``, ``3725`` -> ``"1h02m05s"``, ``4.4`` -> ``"4s"``."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Progress of a job of ``total`` units: a bar on a terminal, sparse plain lines elsewhere, nothing if disabled.

    Use it as a context manager (or call :meth:`close`), and call :meth:`update` as units complete, or wrap an
    iterable with :meth:`track`.

    Args:
        total: Units in the whole job.
        description: What is running, first on every line (``"eval boolq"``).
        unit: Name of a unit, plural (``"questions"``, ``"tensors"``).
        enabled: False writes nothing at all.
        stream: Where to write (default: ``sys.stderr`` at the time of the call).
        clock: Seconds from a monotonic clock (a fake one in tests).
    """

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "rows",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the clock, and the bar when ``stream`` is a terminal."""
        self.total, self.description, self.unit = total, description, unit
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._started = self._last_line = clock()
        self._last_count_shown: int | None = None
        self._bar: Any = None
        self._plain = enabled and not _is_terminal(self._stream)
        if enabled and not self._plain:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, unit=f" {unit}", file=self._stream, leave=False)

    def update(self, done: int = 1) -> None:
        """Count ``done`` more units, and write a line if one is due."""
        self.count += done
        if self._bar is not None:
            self._bar.update(done)
        if not self._plain:
            return
        now = self._clock()
        quiet_for = now - self._last_line
        if quiet_for >= INTERVAL_S or (self._crossed_a_step(done) and quiet_for >= MIN_GAP_S):
            self._write(now)

    def track(self, items: Iterable[Item]) -> Iterator[Item]:
        """Yield ``items``, counting one unit after each."""
        for item in items:
            yield item
            self.update()

    def close(self) -> None:
        """Stop the bar; off a terminal, write the last line when earlier lines were written and it says more."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._plain and self._last_count_shown is not None and self._last_count_shown != self.count:
            self._write(self._clock())
        self._plain = False

    def __enter__(self) -> Progress:
        """The progress itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close it, however the job ended."""
        self.close()

    def line(self, now: float) -> str:
        """The plain progress line at clock time ``now``."""
        elapsed = now - self._started
        text = f"{self.description}: {self.count}/{self.total} {self.unit}"
        if self.total > 0:
            text += f" ({math.floor(100 * self.count / self.total)}%)"
        if elapsed > 0:
            rate = self.count / elapsed
            text += f", {rate:.1f} {self.unit}/s, {format_duration(elapsed)} elapsed"
            if 0 < self.count < self.total:
                text += f", eta {format_duration((self.total - self.count) / rate)}"
        return text

    def _crossed_a_step(self, done: int) -> bool:
        """Whether the last ``done`` units completed another 1/STEPS of the job."""
        if self.total <= 0:
            return False
        return math.floor(self.count * STEPS / self.total) > math.floor((self.count - done) * STEPS / self.total)

    def _write(self, now: float) -> None:
        print(self.line(now), file=self._stream, flush=True)
        self._last_line, self._last_count_shown = now, self.count


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


__all__ = ["INTERVAL_S", "MIN_GAP_S", "STEPS", "Progress", "format_duration"]
