"""Where a short CPU training run's first steps go: page faults, and what the C library's allocator settings change.

    python benchmarks/page_faults.py                    # 270M, the real-data run on 96 examples (6 steps), 2 rounds
    python benchmarks/page_faults.py --examples 64 --rounds 3
    python benchmarks/page_faults.py --quick            # tiny preset, 8 examples, 1 round: seconds

Each round runs the `real-data` row's elmtune run (Apple's commonsense recipe, the benchmark's overrides:
``suite/real_data.py``) once per allocator setting, each in its own process, interleaved:

- ``default``: glibc as it comes (tensors of up to 32 MiB from a heap whose top it trims; larger ones mapped and
  unmapped one by one);
- ``retained-heap``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64 GiB``: every tensor from the heap, and nothing
  handed back to the kernel, so freed memory is reused without faulting it in again;
- ``thp``: ``THP_MEM_ALLOC_ENABLE=1``: torch asks for transparent huge pages on its allocations of 2 MiB and more.

Inside each process ``elmtune.finetune.loop.train_step`` is wrapped to record every optimizer step's wall time, the
process's user and system CPU time and minor page faults over it; the process's peak RSS (``ru_maxrss``) closes it.
The table gives, per setting, the best round by the steps' summed wall time (and the median over rounds): its first
step, the mean of its later steps, their system time and faults; and the lowest peak of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.real_data import train_flags  # noqa: E402
from suite.settings import Settings  # noqa: E402

ALLOCATORS = {
    "default": {},
    "retained-heap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}
"""Setting name -> environment variables of its process (read by glibc and torch at start-up)."""

MARK = "PAGE_FAULTS "


def child(flags: list[str]) -> None:
    """Run ``elmtune FLAGS`` (``train ...``) here, printing one JSON line per optimizer step and one at the end."""
    import elmtune.finetune.loop as loop
    from elmtune.cli.app import app

    train_step = loop.train_step

    def timed(*args, **kwargs):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        outcome = train_step(*args, **kwargs)
        after = resource.getrusage(resource.RUSAGE_SELF)
        step = {
            "wall": time.perf_counter() - start,
            "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt,
        }
        print(MARK + json.dumps(step), flush=True)
        return outcome

    loop.train_step = timed
    try:
        app(args=flags, standalone_mode=False)  # flags begin with "train"
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        env = {name: os.environ[name] for setting in ALLOCATORS.values() for name in setting if name in os.environ}
        print(MARK + json.dumps({"peak_mib": peak, "env": env}), flush=True)


def run_once(settings: Settings, allocator: str, workdir: Path) -> dict:
    """One process of the run under ``allocator``: its steps, its peak and the allocator variables it saw."""
    out = workdir / f"run-{allocator}-{time.monotonic_ns()}"
    flags = train_flags(settings, out)
    env = {**os.environ, **ALLOCATORS[allocator]}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(flags)], env=env, capture_output=True, text=True, check=False
    )
    records = [json.loads(line[len(MARK) :]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not records or "peak_mib" not in records[-1]:
        raise SystemExit(f"{allocator}: the run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    if records[-1]["env"] != ALLOCATORS[allocator]:
        raise SystemExit(f"{allocator}: the process saw {records[-1]['env']}, not {ALLOCATORS[allocator]}")
    return {"steps": records[:-1], **records[-1]}


def summary(runs: list[dict]) -> dict:
    """The best run by the steps' summed wall time, with its first step apart from the rest."""
    best = min(runs, key=lambda run: sum(step["wall"] for step in run["steps"]))
    steps = best["steps"]
    later = steps[1:] or steps
    return {
        "steps_s": sum(step["wall"] for step in steps),
        "median_steps_s": statistics.median(sum(step["wall"] for step in run["steps"]) for run in runs),
        "first_s": steps[0]["wall"],
        "first_sys_s": steps[0]["sys"],
        "first_faults": steps[0]["faults"],
        "later_s": statistics.mean(step["wall"] for step in later),
        "later_sys_s": statistics.mean(step["sys"] for step in later),
        "later_faults": statistics.mean(step["faults"] for step in later),
        "peak_mib": min(run["peak_mib"] for run in runs),
    }


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """Parse the command line, run the settings interleaved and print the table; returns every run by setting."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=96, help="real rows to train on (16 per optimizer step)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--allocators", nargs="+", choices=sorted(ALLOCATORS), default=list(ALLOCATORS))
    parser.add_argument("--quick", action="store_true", help="tiny preset, 8 examples, 1 round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.examples < 1 or args.rounds < 1:
        parser.error("--examples and --rounds must be at least 1")
    if args.child:
        child(json.loads(args.child))
        return {}
    settings = replace(Settings(), examples=args.examples)
    if args.quick:
        settings, args.rounds = Settings().quick(), 1
    runs: dict[str, list[dict]] = {name: [] for name in args.allocators}
    with tempfile.TemporaryDirectory(prefix="elmtune-page-faults-") as workdir:
        for round_index in range(args.rounds):
            order = (
                args.allocators[round_index % len(args.allocators) :]
                + args.allocators[: round_index % len(args.allocators)]
            )
            for name in order:
                runs[name].append(run_once(settings, name, Path(workdir)))
                print(
                    f"round {round_index + 1} {name}: {sum(s['wall'] for s in runs[name][-1]['steps']):.1f} s",
                    flush=True,
                )
    print("command: python benchmarks/page_faults.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"preset {settings.preset}, {settings.examples} examples, best of {args.rounds} by the steps' summed time")
    print("| allocator | steps s (median) | first step s (sys s, faults) | later steps s (sys s, faults) | peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, measured in runs.items():
        row = summary(measured)
        print(
            f"| {name} | {row['steps_s']:.1f} ({row['median_steps_s']:.1f}) | {row['first_s']:.1f} "
            f"({row['first_sys_s']:.1f}, {row['first_faults']:,}) | {row['later_s']:.1f} ({row['later_sys_s']:.1f}, "
            f"{row['later_faults']:,.0f}) | {row['peak_mib']:,.0f} |"
        )
    return runs


if __name__ == "__main__":
    main()
