"""``elmtune train`` sides: the real-data run as a child process, as a user runs it (one or several processes).

The worker starts ``python -m elmtune.cli train ...`` (see :mod:`suite.real_data`), waits for it and reports its wall
time, its peak resident memory (the largest ``ru_maxrss`` of the waited-for children: with several processes, that of
the largest one) and the throughput of its steps from the run's ``metrics.jsonl`` (tokens that are not padding, over
the summed step time, start-up excluded). That summed step time (``step_seconds_total``) is the run's training loop:
collating and computing every step, without start-up, tokenisation or saving.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from suite.real_data import train_flags
from suite.settings import ROOT, Settings


def step_throughput(metrics_file: Path) -> dict[str, float]:
    """Tokens and step seconds of a run from its ``metrics.jsonl`` (logged every step)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = [row for row in rows if "tokens" in row]
    tokens = sum(row["tokens"] for row in steps)
    seconds = max(row["elapsed_s"] for row in steps)
    return {"tokens": tokens, "steps": len(steps), "step_seconds_total": seconds, "tokens_per_s": tokens / seconds}


def padding_free(run_dir: Path) -> bool:
    """Whether the run trained on padding-free batches, from the ``config.yaml`` its run directory keeps."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    return bool(config["data"].get("padding_free"))


def adapter_parameters(run_dir: Path) -> int:
    """Parameters of the run's final adapter, from the safetensors headers (no torch import in this process)."""
    total = 0
    for path in (run_dir / "final").rglob("*.safetensors"):
        with path.open("rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def threads_per_process(settings: Settings, processes: int) -> int:
    """``--threads`` when given, else the cores shared out among the processes (at least one each)."""
    return settings.threads or max(1, cores() // processes)


def elmtune_train(settings: Settings, *, checkpointing: bool = False, processes: int = 1) -> dict[str, Any]:
    """Run the real-data training with ``elmtune train`` in a child process; its time, memory and throughput."""
    run_dir = Path(tempfile.mkdtemp(prefix="real-data-", dir=settings.workdir)) / "run"
    threads = threads_per_process(settings, processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    argv = [
        sys.executable,
        "-m",
        "elmtune.cli",
        *train_flags(settings, run_dir, checkpointing=checkpointing, processes=processes),
    ]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise RuntimeError(f"elmtune train exited {proc.returncode}")
    throughput = step_throughput(run_dir / "metrics.jsonl")
    metrics = {
        "examples": settings.examples,
        "run_seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        **throughput,
    }
    if padding_free(run_dir):  # one unpadded row per micro-batch: the positions computed are the tokens
        metrics["positions"] = throughput["tokens"]
    info = {
        "adapter_parameters": adapter_parameters(run_dir),
        "processes": processes,
        "threads_per_process": threads,
        "command": " ".join(argv[1:]),
    }
    return {"metrics": metrics, "info": info}
