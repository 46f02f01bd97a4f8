"""Results on disk and in the README: JSON lines appended per run, and the README table regenerated from them.

Every row of a run is one JSON line in ``RESULTS_DIR/<UTC date>.jsonl``, with the run's settings, machine info and
command line. ``--update-readme`` rewrites the part of ``benchmarks/README.md`` between the two marker comments: the
latest result of every row found in the results directory, then the rows not measured yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START = "<!-- benchmark-table:start -->"
END = "<!-- benchmark-table:end -->"
NOT_MEASURED = (
    (
        "LoRA training on real data: 2,000 commonsense examples",
        "transformers `Trainer` + peft on Apple's code; TRL `SFTTrainer` + peft on our model",
        ">= 2x; >= 1.5x",
    ),
    ("peak memory with gradient checkpointing", "Apple + peft", "report"),
    ("`elmtune plan` prediction vs measured peak RSS", "measured CPU peak RSS, 6 settings", "within 15%"),
    ("QLoRA (4-bit / 8-bit base)", "bitsandbytes", "report"),
    ("multi-process (2 processes, gloo) throughput", "1 process", "report"),
)


def append_results(results_dir: Path, date: str, rows: list[dict[str, Any]]) -> Path:
    """Append rows as JSON lines to ``results_dir/<date>.jsonl``; return the file."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{date}.jsonl"
    with path.open("a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    return path


def latest_rows(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The most recent result of every row name in the results directory (skipped rows only where nothing else)."""
    latest: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "skipped" in row and "ratio" in latest.get(row["row"], {}):
                continue
            latest[row["row"]] = row
    return latest


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _cell(side: dict[str, Any]) -> str:
    return f"{_number(side['best'])} (median {_number(side['median'])}) {side['side']}"


def table(rows: dict[str, dict[str, Any]], defined: list[tuple[str, str, str, str]] = ()) -> str:
    """The Markdown table: every row, measured or not, then the rows no group measures yet.

    Args:
        rows: The results by row name (see :func:`latest_rows`).
        defined: (group, row, what, target) of every row ``run.py`` knows, in table order; rows without a result
            say which sub-command measures them. Results of rows not in this list follow.
    """
    known = {name for _, name, _, _ in defined}
    pending = {name: (group, what, target) for group, name, what, target in defined if name not in rows}
    order = [name for _, name, _, _ in defined] + [name for name in rows if name not in known]
    lines = [
        "| row | what | unit | elmtune side: best (median) | peer side: best (median) | ratio | target | met | "
        "notes | measured |",
        "|---|---|---|---|---|---:|---|---|---|---|",
    ]
    for name in order:
        if name in pending:
            group, what, target = pending[name]
            lines.append(f"| {name} | {what} | | not run yet: `run.py {group}` | | | {target} | | | |")
            continue
        row = rows[name]
        if "skipped" in row:
            lines.append(f"| {name} | {row['what']} | | | | | {row['target']} | | {row['skipped']} | |")
            continue
        met = {True: "yes", False: "**no**", None: ""}[row["target_met"]]
        notes = ", ".join(f"{k}: {_number(v) if isinstance(v, float) else v}" for k, v in row.get("notes", {}).items())
        machine = row.get("machine", {})
        measured = f"{row.get('date', '')}, {machine.get('cpu', '')} {'/'.join(machine.get('cpu_flags', []))}"
        lines.append(
            f"| {name} | {row['what']} | {row['unit']} | {_cell(row['a'])} | {_cell(row['b'])} | "
            f"{row['ratio']:.3f}x | {row['target']} | {met} | {notes} | {measured.strip(', ')} |"
        )
    for what, against, target in NOT_MEASURED:
        lines.append(f"| - | {what} | | not measured yet | {against} | | {target} | | | |")
    return "\n".join(lines)


def update_readme(
    readme: Path, rows: dict[str, dict[str, Any]], command: str, defined: list[tuple[str, str, str, str]] = ()
) -> None:
    """Replace the text between the markers of ``readme`` with the table and the command that produced it.

    Raises:
        ValueError: The README lacks the two marker comments, in order.
    """
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no '{START}' ... '{END}' section to regenerate")
    body = f"{START}\nGenerated by `{command}`; the last result of every row in the results directory.\n\n"
    body += table(rows, defined) + "\n"
    readme.write_text(text[:start] + body + text[end:])
