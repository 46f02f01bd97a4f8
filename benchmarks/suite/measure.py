"""What every worker measures the same way: thread settings, the clock, step timing and peak resident memory."""

from __future__ import annotations

import time
from collections.abc import Callable

from suite.settings import Settings


def set_threads(settings: Settings) -> None:
    """Apply ``--threads`` (0 keeps torch's default: one per core)."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)


def timed(settings: Settings, fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes on the chosen clock (wall, or this process's CPU time)."""
    clock = time.process_time if settings.clock == "cpu" else time.perf_counter
    start = clock()
    fn()
    return clock() - start


def best_of(settings: Settings, fn: Callable[[], object], warmup: int | None = None) -> float:
    """The fastest of ``settings.steps`` timed calls after ``warmup`` untimed ones (default ``settings.warmup``)."""
    for _ in range(settings.warmup if warmup is None else warmup):
        fn()
    return min(timed(settings, fn) for _ in range(max(1, settings.steps)))


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux ``VmHWM``), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
