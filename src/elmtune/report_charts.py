"""The PNG charts of the reports: line charts (loss curves) and grouped bar charts (base vs tuned), 8x4.5 in at 100 dpi.

matplotlib is optional: :func:`charts_available` says whether it is installed; a report without it has no images and
says so (:data:`NO_CHARTS_NOTE`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NO_CHARTS_NOTE = "matplotlib is not installed, so this report has no charts (pip install matplotlib)."
_SIZE_IN = (8.0, 4.5)
_DPI = 100


@dataclass(frozen=True)
class Series:
    """One line of a line chart.

    Attributes:
        label: Its legend entry.
        x: The x values (optimizer steps).
        y: The y values, one per x.
        markers: Draw a marker on every point (sparse series such as validation losses).
    """

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    markers: bool = False


def charts_available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_chart(series: Sequence[Series], out: Path, *, title: str, xlabel: str, ylabel: str) -> Path:
    """Draw ``series`` against a shared x axis into the PNG ``out``."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=_SIZE_IN, dpi=_DPI)
    for line in series:
        ax.plot(line.x, line.y, "o-" if line.markers else "-", label=line.label, linewidth=1.5, markersize=4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def bar_chart(
    categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]], out: Path, *, title: str, ylabel: str
) -> Path:
    """Draw one group of bars per category (e.g. base and tuned per metric) into the PNG ``out``.

    Args:
        categories: The x-axis labels.
        groups: (legend label, one value per category) per bar series.
        out: The PNG to write.
        title: The chart title.
        ylabel: The y-axis label.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=_SIZE_IN, dpi=_DPI)
    width = 0.8 / max(len(groups), 1)
    for index, (label, values) in enumerate(groups):
        positions = [i + (index - (len(groups) - 1) / 2) * width for i in range(len(categories))]
        bars = ax.bar(positions, values, width=width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(range(len(categories)), list(categories), rotation=15 if len(categories) > 4 else 0)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = ["NO_CHARTS_NOTE", "Series", "bar_chart", "charts_available", "line_chart"]
