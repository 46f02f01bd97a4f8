"""What machine and software a result was measured on: CPU model and flags, threads, library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "lm_eval", "trl", "elmtune")


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model name and which of the vector-instruction flags worth knowing it has (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def versions() -> dict[str, str]:
    """Installed versions of the packages the rows run."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine_info(threads: int) -> dict[str, Any]:
    """Everything above plus core count, the thread setting, the platform and Python."""
    return {
        **cpu_info(),
        "cores": os.cpu_count(),
        "threads": threads or "torch default",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }
