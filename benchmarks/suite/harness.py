"""Sides, rows and the interleaved runner: every side runs in its own process, round after round (A, B, A, B).

A *side* is one command (normally ``benchmarks/worker.py KIND SETTINGS``) whose last stdout line is a JSON object
``{"metrics": {...}, "info": {...}}``; the runner adds ``process_seconds`` (the child's wall time, start-up
included) to the metrics. A *row* compares one metric of side A with one of side B over the rounds: the best
(maximum when higher is better, else minimum) and the median of each side, and the ratio ``best A / best B``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from suite.settings import BENCHMARKS, ROOT, Settings

APPLE_SKIP = "skipped: --apple-code not given"


class SideFailed(RuntimeError):
    """A side's process exited non-zero or printed no JSON result."""


@dataclass(frozen=True)
class Side:
    """One measured program: a worker kind (``benchmarks/worker.py KIND``) or an explicit command.

    An explicit command gets ``quick_args`` appended under ``--quick`` (the worker kinds read the settings instead).
    A side that needs Apple's code runs under ``settings.apple_python`` when one is given (``--apple-python``: an
    environment with the transformers Apple's code was written for); such a side imports no elmtune.
    """

    name: str
    kind: str = ""
    command: tuple[str, ...] = ()
    needs_apple: bool = False
    quick_args: tuple[str, ...] = ()

    def argv(self, settings: Settings) -> list[str]:
        """The command line of one run of this side (``@WORKDIR@`` in a command is the run's scratch directory)."""
        if self.command:
            quick = list(self.quick_args) if settings.is_quick else []
            return [part.replace("@WORKDIR@", settings.workdir) for part in self.command] + quick
        python = settings.apple_python if self.needs_apple and settings.apple_python else sys.executable
        return [python, str(BENCHMARKS / "worker.py"), self.kind, settings.to_json()]


@dataclass(frozen=True)
class Pick:
    """Where a row's values come from: a side's metric per round, less another side's (``minus``), or a constant."""

    side: str = ""
    metric: str = ""
    minus: tuple[str, str] | None = None
    per: str = ""
    constant: str = ""

    def values(self, rounds: list[dict[str, dict]], context: dict[str, Any]) -> list[float]:
        """One value per round."""
        if self.constant:
            return [float(context[self.constant])] * len(rounds)
        values = [float(r[self.side]["metrics"][self.metric]) for r in rounds]
        if self.per:
            values = [v / float(r[self.side]["metrics"][self.per]) for v, r in zip(values, rounds, strict=True)]
        if self.minus is not None:
            other, metric = self.minus
            values = [v - float(r[other]["metrics"][metric]) for v, r in zip(values, rounds, strict=True)]
        return values

    def label(self) -> str:
        """What the values are, for the report."""
        if self.constant:
            return self.constant
        return self.side + (f" - {self.minus[0]}" if self.minus else "")

    def sides(self) -> set[str]:
        """The sides this pick reads."""
        return {s for s in (self.side, self.minus[0] if self.minus else "") if s}


@dataclass(frozen=True)
class Target:
    """A goal for a row's ratio: ``>= value`` or ``<= value``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        """Whether the ratio meets the goal."""
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}x"


@dataclass(frozen=True)
class Row:
    """One line of the table: side A's metric against side B's."""

    name: str
    what: str
    a: Pick
    b: Pick
    unit: str
    higher_is_better: bool
    target: Target | None = None
    notes: Callable[[list[dict[str, dict]], dict[str, Any]], dict[str, Any]] | None = None

    def sides(self) -> set[str]:
        """Every side this row reads."""
        return self.a.sides() | self.b.sides()


@dataclass(frozen=True)
class Group:
    """Sides run together (one sub-command), the rows made from them, and an optional set-up (files, constants).

    ``max_rounds`` caps ``--rounds`` for a group whose figures do not vary between runs (memory predictions).
    """

    name: str
    sides: list[Side]
    rows: list[Row]
    setup: Callable[[Settings], dict[str, Any]] | None = None
    max_rounds: int | None = None


def run_side(side: Side, settings: Settings) -> dict[str, Any]:
    """Run one side once in a fresh process; its metrics gain ``process_seconds``."""
    paths = [str(ROOT / "src"), str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env["BENCH_LAUNCHED_AT"] = repr(time.time())
    start = time.perf_counter()
    proc = subprocess.run(side.argv(settings), capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SideFailed(f"side {side.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if "metrics" not in result:  # a plain JSON object of a script's own: its numbers are the metrics
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        result = {"metrics": numbers, "info": {k: v for k, v in result.items() if k not in numbers}}
    if result["metrics"].pop("exit", 0) not in (None, 0):
        raise SideFailed(f"side {side.name}: the command failed:\n{proc.stderr[-3000:]}")
    result["metrics"]["process_seconds"] = seconds
    result.setdefault("info", {})
    return result


def stats(values: list[float], higher_is_better: bool) -> dict[str, Any]:
    """Best (max or min) and median of one side's values."""
    best = max(values) if higher_is_better else min(values)
    return {"values": values, "best": best, "median": statistics.median(values)}


def row_result(row: Row, rounds: list[dict[str, dict]], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON line of one row."""
    a = {"side": row.a.label(), **stats(row.a.values(rounds, context), row.higher_is_better)}
    b = {"side": row.b.label(), **stats(row.b.values(rounds, context), row.higher_is_better)}
    ratio = a["best"] / b["best"] if b["best"] else float("nan")
    result = {
        "row": row.name,
        "what": row.what,
        "unit": row.unit,
        "higher_is_better": row.higher_is_better,
        "a": a,
        "b": b,
        "ratio": ratio,
        "target": str(row.target) if row.target else "report",
        "target_met": row.target.met(ratio) if row.target else None,
        "rounds": len(rounds),
    }
    if row.notes is not None:
        result["notes"] = row.notes(rounds, context)
    libraries = [rounds[0].get(pick.side, {}).get("info", {}).get("libraries") for pick in (row.a, row.b)]
    if None not in libraries and libraries[0] != libraries[1]:  # e.g. Apple's side under --apple-python
        result.setdefault("notes", {})["libraries (A / B)"] = " / ".join(libraries)
    return result


def run_group(
    group: Group,
    settings: Settings,
    rounds: int,
    log: Callable[[str], None],
    skip: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Run every available side of the group ``rounds`` times, interleaved, and return one result per row.

    Sides named in ``skip`` (``--skip-side``) are left out, like Apple's without ``--apple-code``; the rows that
    read them are reported as skipped, naming why.
    """
    have_apple = bool(settings.apple_code)
    sides = [s for s in group.sides if (have_apple or not s.needs_apple) and s.name not in skip]
    context = group.setup(settings) if group.setup is not None else {}
    results: list[dict[str, dict]] = []
    rounds = min(rounds, group.max_rounds or rounds)
    for i in range(rounds):
        this_round = {}
        for side in sides:  # A, B, A, B: one fresh process per side per round
            this_round[side.name] = run_side(side, settings)
            log(f"{group.name}: round {i + 1}/{rounds}, {side.name} done")
        results.append(this_round)
    names = {s.name for s in sides}
    out = []
    for row in group.rows:
        if not row.sides() <= names:
            target = str(row.target) if row.target else "report"
            left_out = sorted(row.sides() & skip)
            why = f"skipped: --skip-side {', '.join(left_out)}" if left_out else APPLE_SKIP
            out.append({"row": row.name, "what": row.what, "skipped": why, "target": target})
            continue
        out.append(row_result(row, results, context))
    return out
