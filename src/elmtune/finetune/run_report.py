"""A training run's report: ``report.md`` and a self-contained ``report.html`` in the run directory.

Rendered from the run's own files only (``config.yaml``, ``metrics.jsonl``, ``final/``), so it can be rendered again
at any time (``elmtune report RUN_DIR``). Charts (PNG, beside the report): the train and validation loss, and for a
preference run the reward accuracy and margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elmtune.finetune.run_log import read_metrics
from elmtune.report_charts import NO_CHARTS_NOTE, Series, charts_available, line_chart
from elmtune.report_html import Block, Heading, Image, Paragraph, Report, key_value_table, number, write_report

LOSS_CHART = "report_loss.png"
REWARDS_CHART = "report_rewards.png"
_REWARD_KEYS = ("rewards/accuracies", "rewards/margins")


def is_run_dir(directory: Path) -> bool:
    """Whether ``directory`` is a training run directory (its ``config.yaml`` and ``metrics.jsonl``)."""
    return (directory / "config.yaml").is_file() and (directory / "metrics.jsonl").is_file()


def _series(rows: list[dict[str, Any]], key: str, label: str, markers: bool = False) -> Series | None:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    if not points:
        return None
    return Series(label, tuple(p[0] for p in points), tuple(p[1] for p in points), markers)


def _charts(run_dir: Path, rows: list[dict[str, Any]]) -> list[Block]:
    if not charts_available():
        return [Paragraph(NO_CHARTS_NOTE)]
    blocks: list[Block] = []
    losses = [s for s in (_series(rows, "loss", "train"), _series(rows, "eval_loss", "validation", True)) if s]
    if losses:
        line_chart(losses, run_dir / LOSS_CHART, title="Loss", xlabel="optimizer step", ylabel="loss")
        blocks.append(Image(LOSS_CHART, "train and validation loss by optimizer step"))
    rewards = [s for s in (_series(rows, key, key) for key in _REWARD_KEYS) if s]
    if rewards:
        line_chart(
            rewards, run_dir / REWARDS_CHART, title="Preference rewards", xlabel="optimizer step", ylabel="value"
        )
        blocks.append(Image(REWARDS_CHART, "rewards/accuracies and rewards/margins by optimizer step"))
    return blocks


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    values = [row[key] for row in rows if row.get(key) is not None]
    return values[-1] if values else None


def _summary(run_dir: Path, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    final = run_dir / "final"
    pairs = [
        ("steps", str(_last(rows, "step") if _last(rows, "loss") is not None else 0)),
        ("final train loss", number(_last(rows, "loss"))),
        ("final validation loss", number(_last(rows, "eval_loss"))),
    ]
    pairs += [(f"final {key}", number(_last(rows, key))) for key in _REWARD_KEYS if _last(rows, key) is not None]
    pairs += [
        ("training time (s)", number(_last(rows, "elapsed_s"))),
        ("peak memory (MB)", number(max((r["peak_memory_mb"] for r in rows if "peak_memory_mb" in r), default=None))),
        ("final adapter", f"{final.name}/" if final.is_dir() else "not written"),
    ]
    return pairs


def build_run_report(run_dir: Path) -> Report:
    """The report of the run in ``run_dir`` (its charts are drawn beside it)."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    blocks: list[Block] = [
        Heading("Summary"),
        key_value_table(_summary(run_dir, rows)),
        Heading("Curves"),
        *_charts(run_dir, rows),
        Heading("Configuration"),
        Paragraph((run_dir / "config.yaml").read_text(encoding="utf-8"), code=True),
    ]
    return Report(f"Training run {run_dir.resolve().name}", tuple(blocks))


def write_run_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``report.html`` (and the charts) into ``run_dir``; returns the HTML file."""
    return write_report(build_run_report(run_dir), Path(run_dir))


__all__ = ["LOSS_CHART", "REWARDS_CHART", "build_run_report", "is_run_dir", "write_run_report"]
