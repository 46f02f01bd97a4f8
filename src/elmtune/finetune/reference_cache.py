"""Reference log-probabilities computed once before training (``train.precompute_reference``), cached in the run.

With an adapter on a frozen base the reference never changes, so each training pair's reference log-probabilities
(chosen and rejected, summed over the target tokens) can be computed once; the steps then run only the policy
forward and look the values up by the batch's ``item_index``. The table is stored in the run directory::

    reference_logps.safetensors   chosen (N,), rejected (N,) float32, by training pair index
    reference_logps.json          the cache key, what went into it, pairs, seconds and peak memory of the pass

The key is a sha256 of: the tokenized training pairs (ids and labels, in order), the base model (its config and a
digest of its weights), the starting adapter (a digest of its files, or none) and how the reference is computed
(base dtype, precision, device type). A resume reuses the table when the key matches and recomputes it, with a
one-line notice, when it does not. Token counts (for IPO) come from the batch's labels, so they are not stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from elmtune.file_digest import update_with_file
from elmtune.finetune.objectives import PreferenceObjective
from elmtune.finetune.reference import ReferenceLogps
from elmtune.finetune.run_outputs import peak_memory_mb
from elmtune.finetune.step import micro_batches, to_device

TENSORS_FILE = "reference_logps.safetensors"
INFO_FILE = "reference_logps.json"


@dataclass(frozen=True)
class ReferenceCacheReport:
    """How a run obtained its precomputed reference log-probabilities.

    Attributes:
        computed: True when this run computed them, False when it reused the run directory's table.
        pairs: Training pairs in the table.
        seconds: Wall time of the pass that computed them.
        peak_memory_mb: Peak memory of that pass (CUDA allocator peak; process peak RSS on CPU).
        key: The cache key (sha256).
    """

    computed: bool
    pairs: int
    seconds: float
    peak_memory_mb: float
    key: str

    def line(self) -> str:
        """One line for the run's log."""
        how = "computed" if self.computed else "reused from the run directory (same key)"
        return (
            f"reference log-probs of {self.pairs} pairs {how}: {self.seconds:.2f} s, peak memory "
            f"{self.peak_memory_mb:.0f} MB"
        )

    def row(self) -> dict[str, Any]:
        """Fields of the run's ``metrics.jsonl`` (written once, when computed)."""
        return {
            "reference_pairs": self.pairs,
            "reference_precompute_s": round(self.seconds, 3),
            "reference_peak_memory_mb": round(self.peak_memory_mb, 1),
        }


def tokens_sha256(pairs: Sequence[Any]) -> str:
    """sha256 of the tokenized pairs: ids and labels of both sides, in order."""
    digest = hashlib.sha256()
    for pair in pairs:
        for array in (pair.chosen_input_ids, pair.chosen_labels, pair.rejected_input_ids, pair.rejected_labels):
            digest.update(len(array).to_bytes(8, "little"))
            digest.update(array.astype("<i8").tobytes())
    return digest.hexdigest()


def adapter_files_sha256(adapter_dir: str | None) -> str:
    """sha256 of a saved adapter's files (names and contents), or ``none`` without one."""
    if adapter_dir is None:
        return "none"
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(adapter_dir).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        update_with_file(digest, path)
    return digest.hexdigest()


def cache_key(parts: dict[str, str]) -> str:
    """The sha256 of the key's parts (see the module docstring)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def compute_reference_logps(
    model: nn.Module,
    objective: PreferenceObjective,
    pairs: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    accelerator: Accelerator,
) -> ReferenceLogps:
    """Every pair's reference log-probabilities, in batches of ``batch_size`` in index order."""
    chosen, rejected = [], []
    for batch in micro_batches(pairs, list(range(len(pairs))), collate, batch_size):
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            logps = objective.reference_logps(model, batch)  # (2B,)
        side_chosen, side_rejected = logps.float().chunk(2)  # (B,) each
        chosen.append(side_chosen.cpu())
        rejected.append(side_rejected.cpu())
    return ReferenceLogps(torch.cat(chosen), torch.cat(rejected))


def _read(run_dir: Path, key: str) -> ReferenceLogps | None:
    """The stored table when its key is ``key`` (None when absent, unreadable or another key)."""
    from safetensors.torch import load_file

    try:
        info = json.loads((run_dir / INFO_FILE).read_text())
        if info.get("key") != key:
            return None
        tensors = load_file(str(run_dir / TENSORS_FILE))
    except (OSError, ValueError):
        return None
    return ReferenceLogps(tensors["chosen"], tensors["rejected"])


def _write(run_dir: Path, table: ReferenceLogps, info: dict[str, Any]) -> None:
    """Store the table, then its key (each file replaced atomically; the key last, so a torn write never matches)."""
    from safetensors.torch import save_file

    (run_dir / INFO_FILE).unlink(missing_ok=True)
    staged = run_dir / f".{TENSORS_FILE}.partial"
    save_file({"chosen": table.chosen.contiguous(), "rejected": table.rejected.contiguous()}, str(staged))
    os.replace(staged, run_dir / TENSORS_FILE)
    staged_info = run_dir / f".{INFO_FILE}.partial"
    staged_info.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(staged_info, run_dir / INFO_FILE)


def load_or_compute(
    run_dir: Path,
    parts: dict[str, str],
    compute: Callable[[], ReferenceLogps],
    accelerator: Accelerator,
    notice: Callable[[str], None],
) -> tuple[ReferenceLogps, ReferenceCacheReport]:
    """The run directory's table when its key matches ``parts``, else ``compute()`` stored there (main process).

    Args:
        run_dir: The run directory (locked by this run).
        parts: What the key is made of (see the module docstring).
        compute: Computes the table.
        accelerator: The run's ``Accelerator``: the main process computes and writes, the others then read.
        notice: Prints a one-line notice when a stored table is replaced because its key differs.

    Returns:
        The table and how it was obtained.
    """
    key = cache_key(parts)
    table = _read(run_dir, key) if accelerator.is_main_process else None
    report = None
    if accelerator.is_main_process and table is None:
        if (run_dir / INFO_FILE).is_file():
            notice(f"{run_dir / INFO_FILE}: the data, model, starting adapter or dtype changed; recomputing")
        device = accelerator.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        table = compute()
        report = ReferenceCacheReport(True, len(table.chosen), time.perf_counter() - start, peak_memory_mb(device), key)
        _write(run_dir, table, {"key": key, "parts": parts, **asdict(report)})
    accelerator.wait_for_everyone()
    if table is None:  # the other processes read what the main process wrote
        table = _read(run_dir, key)
        if table is None:
            raise RuntimeError(f"{run_dir / INFO_FILE}: the reference log-probs were not written")
    if report is None:
        stored = json.loads((run_dir / INFO_FILE).read_text())
        report = ReferenceCacheReport(False, len(table.chosen), stored["seconds"], stored["peak_memory_mb"], key)
    return table, report


__all__ = [
    "INFO_FILE",
    "TENSORS_FILE",
    "ReferenceCacheReport",
    "adapter_files_sha256",
    "cache_key",
    "compute_reference_logps",
    "load_or_compute",
    "tokens_sha256",
]
