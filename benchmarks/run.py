"""One benchmark command: every row of the performance table, each side in its own process, interleaved.

    python benchmarks/run.py --all                     # every row, 270M shape, fp32, batch 4 x 256, r 32
    python benchmarks/run.py train-step eval           # some groups
    python benchmarks/run.py real-data --examples 64   # Apple's commonsense recipe on 64 real examples
    python benchmarks/run.py --all --quick             # tiny preset, small shapes: a smoke test in about a minute
    python benchmarks/run.py real-data --skip-side real-elmtune-checkpointing   # leave one side out
    python benchmarks/run.py --all --apple-code DIR    # also Apple's hub modeling code (configuration_openelm.py
                                                       # and modeling_openelm.py from a hub download)
    python benchmarks/run.py train-step --apple-code DIR --apple-python OLD/bin/python
                                                       # Apple's sides under the transformers it was written for

Each row prints one JSON line; rows are appended to ``--results-dir`` (default ``benchmarks/results``) as
``<UTC date>.jsonl`` with machine info, and ``--update-readme`` regenerates the table in ``benchmarks/README.md``.
See ``benchmarks/README.md`` for the rows, the shapes and how the figures are computed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.apple_code import missing_files  # noqa: E402
from suite.groups import all_groups, defined_rows  # noqa: E402
from suite.harness import SideFailed, run_group  # noqa: E402
from suite.machine import machine_info  # noqa: E402
from suite.real_data import DATA, DATA_ROWS  # noqa: E402
from suite.report import append_results, latest_rows, update_readme  # noqa: E402
from suite.settings import BENCHMARKS, Settings  # noqa: E402

from elmtune.models.presets import PRESETS  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; a mistake exits 2 with one line naming the option."""
    groups = list(all_groups())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"which rows to run: {', '.join(groups)}")
    parser.add_argument("--all", action="store_true", help="run every group")
    parser.add_argument("--quick", action="store_true", help="tiny preset, small shapes, 1 round unless --rounds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per group (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, help="timed steps per side process (default 2; 1 with --quick)")
    parser.add_argument("--preset", help="OpenELM preset (random weights); default 270M, tiny with --quick")
    parser.add_argument(
        "--examples",
        type=int,
        help=f"real-data, scale: rows to train on (default 2000; 8 with --quick; at most {DATA_ROWS})",
    )
    parser.add_argument("--threads", type=int, help="torch threads in every side (default: torch's; 1 with --quick)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="time steps by wall or CPU time")
    parser.add_argument("--apple-code", type=Path, help="directory with Apple's configuration/modeling_openelm.py")
    parser.add_argument(
        "--apple-python",
        type=Path,
        help="the Python of an environment with the transformers Apple's code was written for (e.g. 4.40): "
        "Apple's sides run under it",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCHMARKS / "results", help="where results are appended")
    parser.add_argument("--update-readme", action="store_true", help="regenerate the table in the README")
    parser.add_argument("--readme", type=Path, default=BENCHMARKS / "README.md", help="the README to regenerate")
    parser.add_argument(
        "--skip-side",
        action="append",
        default=[],
        metavar="SIDE",
        help="leave this side out (repeatable); the rows that read it are reported as skipped",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the run's scratch directory is made (default: the temp dir)"
    )
    args = parser.parse_args(argv)
    unknown = [g for g in args.groups if g not in groups]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r}; choose from {', '.join(groups)} or give --all")
    if not args.groups and not args.all and not args.update_readme:
        parser.error("name the groups to run (e.g. train-step) or give --all")
    sides = sorted({side.name for group in all_groups().values() for side in group.sides})
    for side in args.skip_side:
        if side not in sides:
            parser.error(f"--skip-side {side!r} is not a side; choose from {', '.join(sides)}")
    if args.apple_code is not None and missing_files(args.apple_code):
        parser.error(f"--apple-code {args.apple_code} lacks {', '.join(missing_files(args.apple_code))}")
    if args.apple_python is not None:
        if args.apple_code is None:
            parser.error("--apple-python runs Apple's code: give --apple-code DIR too")
        if not (args.apple_python.is_file() and os.access(args.apple_python, os.X_OK)):
            parser.error(f"--apple-python {args.apple_python} is not an executable file")
    if not args.readme.is_file() and args.update_readme:
        parser.error(f"--readme {args.readme} does not exist")
    if args.examples is not None and not 1 <= args.examples <= DATA_ROWS:
        parser.error(f"--examples must be between 1 and {DATA_ROWS} (the rows of {DATA.name})")
    for option, value in (("--rounds", args.rounds), ("--steps", args.steps)):
        if value is not None and value < 1:
            parser.error(f"{option} must be at least 1")
    if args.preset is not None and args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r} is not a preset; choose from {', '.join(PRESETS)}")
    return args


def settings_from(args: argparse.Namespace, workdir: Path) -> Settings:
    """The run's settings: the defaults (or the quick preset), then the options given."""
    settings = Settings().quick() if args.quick else Settings()
    changes = {"clock": args.clock, "workdir": str(workdir)}
    if args.threads is not None:
        changes["threads"] = args.threads
    if args.apple_code is not None:
        changes["apple_code"] = str(args.apple_code.resolve())
    if args.apple_python is not None:
        changes["apple_python"] = str(args.apple_python.absolute())  # a venv's python is a link: keep its path
    if args.preset:
        changes["preset"] = args.preset
    if args.steps:
        changes["steps"] = args.steps
    if args.examples:
        changes["examples"] = args.examples
    return replace(settings, **changes)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, chosen: list[str], rounds: int, command: str) -> int:
    """Run the chosen groups; print each row as a JSON line and append it to the results. Returns the exit status."""
    groups = all_groups()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="elmtune-bench-", dir=args.workdir))  # ours alone: removed at the end
    settings = settings_from(args, workdir)
    now = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info(settings.threads)
    log(f"{settings.describe()}; {rounds} round(s); {machine['cpu']} {'/'.join(machine['cpu_flags'])}")
    try:
        for name in chosen:
            try:
                rows = run_group(groups[name], settings, rounds, log, skip=frozenset(args.skip_side))
            except SideFailed as failure:
                log(f"error: {name}: {failure}")
                return 1
            stamped = [
                {
                    **row,
                    "date": now.strftime("%Y-%m-%d %H:%M UTC"),
                    "settings": settings.describe(),
                    "machine": machine,
                    "command": command,
                }
                for row in rows
            ]
            for row in stamped:
                print(json.dumps(row), flush=True)
            append_results(args.results_dir, now.strftime("%Y-%m-%d"), stamped)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python benchmarks/run.py " + " ".join(argv)
    chosen = list(all_groups()) if args.all else list(dict.fromkeys(args.groups))
    rounds = args.rounds or (1 if args.quick else 3)
    if chosen:
        status = measure(args, chosen, rounds, command)
        if status:
            return status
    if args.update_readme:
        update_readme(args.readme, latest_rows(args.results_dir), command, defined_rows())
        log(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
