"""What a run writes while it trains: ``metrics.jsonl``, a loss-curve PNG, and a live progress bar.

The bar (rich) shows step, loss, LR, tokens/s and ETA on a terminal. In a non-TTY log (CI, ``nohup``, a cluster
job) there is no bar: one plain line is printed every ``print_every`` steps instead, so logs stay readable.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed, so a killed run keeps what it logged)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None) -> None:
        """Open ``path``; on resume, drop rows logged after ``truncate_after_step`` (they belong to lost work)."""
        self.path = path
        if truncate_after_step is not None and path.is_file():
            kept = [row for row in read_metrics(path) if row.get("step", 0) <= truncate_after_step]
            path.write_text("".join(json.dumps(_finite_or_null(row), allow_nan=False) + "\n" for row in kept))
        self._handle = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` as strict JSON: a NaN or infinite number is written as ``null``."""
        self._handle.write(json.dumps(_finite_or_null(row), allow_nan=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def _finite_or_null(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (a torn last line from a killed process is ignored)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_loss_curve(metrics_path: Path, out_path: Path, title: str = "") -> Path | None:
    """Draw training (and validation) loss against step into a PNG; None when there is nothing to plot."""
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


PROGRESS_METRICS = ("rewards/accuracies", "rewards/margins")
"""Metrics shown after the loss in the progress line when a row has them (preference runs; TRL's names)."""


def progress_stats(row: dict[str, Any], prefix: str = "") -> str:
    """``loss 0.6931  rewards/accuracies 0.500  rewards/margins 0.0123`` from a metrics row (keys under ``prefix``)."""
    loss = row.get(f"{prefix}loss")
    parts = [f"loss {float('nan') if loss is None else loss:.4f}"]
    parts += [f"{name} {row[prefix + name]:.4g}" for name in PROGRESS_METRICS if row.get(prefix + name) is not None]
    return "  ".join(parts)


class ProgressReporter:
    """A rich progress bar on a terminal, sparse plain lines elsewhere; silent on non-main processes."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, print_every: int = 10) -> None:
        self.console = Console(stderr=True)
        self.total = total_steps
        self.print_every = max(1, print_every)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self._start_step = start_step
        self._start = time.perf_counter()
        self._progress: Progress | None = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, stats="")
            self._progress.start()

    def update(self, step: int, row: dict[str, Any]) -> None:
        """Show the metrics ``row`` logged at ``step``."""
        if not self.enabled:
            return
        lr, speed = row.get("lr", 0.0), row.get("tokens_per_s", 0.0)
        stats = f"{progress_stats(row)}  lr {lr:.2e}  {speed:.0f} tok/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=stats)
        elif step % self.print_every == 0 or step == self.total:
            done = step - self._start_step
            rate = done / max(time.perf_counter() - self._start, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            self.console.print(f"step {step}/{self.total}  {stats}  eta {eta:.0f}s", highlight=False)

    def message(self, text: str) -> None:
        """A one-off line (evaluation results, checkpoint saved, ...)."""
        if self.enabled:
            self.console.print(text, highlight=False)

    def close(self) -> None:
        """Stop the bar."""
        if self._progress is not None:
            self._progress.stop()
