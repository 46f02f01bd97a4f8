"""Training checkpoints: written atomically, the last K kept, everything needed to resume exactly.

A checkpoint is a directory ``checkpoints/step-00000100/`` holding::

    adapter/              the adapter in PEFT format        } written by a caller-supplied function
    trainable.safetensors every trainable tensor, by name  }
    optimizer.pt          optimizer state (tensors and numbers only; loaded with ``weights_only=True``)
    scheduler.json        LR scheduler state
    rng-rank{N}.pt        torch / CUDA RNG states of process N (tensors), loaded with ``weights_only=True``
    rng-rank{N}.json      Python and NumPy RNG states of process N
    trainer_state.json    step, position in the data order, metrics so far, the run's identity
    config.yaml           the full run config
    manifest.json         size and sha256 of every other file (see :mod:`elmtune.finetune.checkpoint_integrity`)

Checkpoints written before per-process RNG files hold a single ``rng.pt`` / ``rng.json``; they are still read (every
process then restores the same states, as they were saved).

It is first written to a hidden temporary directory, every file is fsynced, then the directory is renamed into place
(atomic on POSIX) and the parent fsynced. A process killed mid-write leaves only the temporary directory, which is
ignored and cleaned up later; the previous checkpoint stays intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from elmtune.errors import ElmtuneError
from elmtune.finetune.checkpoint_integrity import write_manifest
from elmtune.output_paths import removed_on_failure

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TMP_PREFIX = ".tmp-"


@dataclass
class TrainerState:
    """Counters of a run, saved in every checkpoint.

    Attributes:
        step: Optimizer steps completed.
        epoch: Epoch of the next batch.
        batch_in_epoch: Index of the next global batch within ``epoch``'s order.
        tokens_seen: Supervised tokens processed so far.
        elapsed_s: Training time so far (wall clock, excluding earlier crashed attempts' lost work).
        log_history: Metrics rows logged so far.
        skipped_nonfinite: Steps skipped because their loss or gradient norm was NaN or infinite.
        total_steps: Optimizer steps the run was planned for when this state was saved (None in old checkpoints).
        num_processes: Data-parallel processes of the run (None in old checkpoints).
        data_sha256: Fingerprint of the training data's content taken when the run started (None when the data is
            not a local file or directory, or in old checkpoints).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    skipped_nonfinite: int = 0
    total_steps: int | None = None
    num_processes: int | None = None
    data_sha256: str | None = None


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


RngStates = tuple[dict[str, Any], dict[str, Any]]


def rng_file_names(rank: int) -> tuple[str, str]:
    """Names of the tensor and the JSON RNG file of process ``rank`` inside a checkpoint."""
    return f"rng-rank{rank}.pt", f"rng-rank{rank}.json"


def rng_states() -> RngStates:
    """Current RNG states: (tensor states for ``torch.save``, JSON-able Python/NumPy states)."""
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, plain


def restore_rng_states(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def save_checkpoint(
    root: Path,
    state: TrainerState,
    *,
    write_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
    keep_last: int | None = None,
    extra_tensors: dict[str, Any] | None = None,
    rng: list[RngStates] | None = None,
) -> Path:
    """Write a checkpoint for ``state.step`` atomically and prune older ones.

    Args:
        root: The run's ``checkpoints/`` directory.
        state: Counters to store.
        write_model: Writes the model's part (adapter, trainable tensors) into the directory it is given.
        optimizer: Optimizer whose state is saved.
        scheduler: LR scheduler whose state is saved.
        config: The full run config (written as YAML).
        keep_last: Keep only this many newest checkpoints (None: keep all).
        extra_tensors: More tensor state to store in ``extra.pt`` (e.g. a gradient scaler's).
        rng: The RNG states of every process, by rank (gathered by the caller); None stores this process's as rank 0.

    Returns:
        The checkpoint directory.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    with removed_on_failure(tmp, final):  # a failed write (a full disk, non-finite weights) leaves no partial copy
        tmp.mkdir()
        write_model(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict(), default=_not_serializable))
        for rank, (tensors, plain) in enumerate(rng if rng is not None else [rng_states()]):
            tensor_name, json_name = rng_file_names(rank)
            torch.save(tensors, tmp / tensor_name)
            (tmp / json_name).write_text(json.dumps(plain))
        if extra_tensors:
            torch.save(extra_tensors, tmp / "extra.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state.__dict__, indent=1))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        write_manifest(tmp)
        _fsync_tree(tmp)
        if final.exists():  # re-saving the same step (e.g. the final step after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    _fsync_dir(root)
    for stale in root.iterdir():
        if stale.name.startswith(TMP_PREFIX) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)  # left by a process killed mid-write
    if keep_last is not None:
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _not_serializable(value: object) -> Any:
    raise TypeError(f"scheduler state holds a non-JSON value {type(value).__name__}; use a LambdaLR over Schedule")


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read; the caller restores model, optimizer and scheduler from it."""

    path: Path
    state: TrainerState
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any]

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"


def read_rng_states(path: Path, rank: int = 0) -> RngStates:
    """The RNG states of process ``rank`` stored in checkpoint ``path`` (for :func:`restore_rng_states`).

    A checkpoint from before per-process RNG files holds one ``rng.pt`` / ``rng.json``, which every rank reads.

    Raises:
        ElmtuneError: The checkpoint holds per-process RNG states but none for ``rank`` (fewer processes saved it).
    """
    tensor_name, json_name = rng_file_names(rank)
    if not (path / tensor_name).is_file():
        if (path / "rng.pt").is_file() and not (path / rng_file_names(0)[0]).is_file():
            tensor_name, json_name = "rng.pt", "rng.json"
        else:
            saved = len(list(path.glob("rng-rank*.pt")))
            raise ElmtuneError(
                f"checkpoint {path} holds the RNG states of {saved} process(es), none for process {rank}; resume "
                f"with --num-processes {saved}"
            )
    return torch.load(path / tensor_name, weights_only=True), json.loads((path / json_name).read_text())


def read_checkpoint_meta(path: Path) -> tuple[TrainerState, dict[str, Any]]:
    """The trainer state and the run config stored in checkpoint ``path`` (without loading any tensors)."""
    state = TrainerState(**json.loads((path / "trainer_state.json").read_text()))
    return state, yaml.safe_load((path / "config.yaml").read_text())


def load_checkpoint(path: Path, restore_rng: bool = True, rank: int = 0) -> LoadedCheckpoint:
    """Read a checkpoint directory (and, by default, restore the RNG states it holds for process ``rank``)."""
    state, config = read_checkpoint_meta(path)
    optimizer = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    scheduler = json.loads((path / "scheduler.json").read_text())
    extra = torch.load(path / "extra.pt", weights_only=True) if (path / "extra.pt").is_file() else {}
    if restore_rng:
        restore_rng_states(*read_rng_states(path, rank))
    return LoadedCheckpoint(path, state, optimizer, scheduler, config, extra)
