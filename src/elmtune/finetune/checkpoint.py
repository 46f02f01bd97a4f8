"""Training checkpoints: written atomically, the last K kept, everything needed to resume exactly.

A checkpoint is a directory ``checkpoints/step-00000100/`` holding::

    adapter/              the adapter in PEFT format and the run's tokenizer (written by a caller-supplied function;
                          resume reads the adapter files only)
    optimizer.pt          optimizer state (tensors and numbers only; loaded with ``weights_only=True``)
    scheduler.json        LR scheduler state
    rng-rank{N}.pt        torch / CUDA RNG states of process N (tensors), loaded with ``weights_only=True``
    rng-rank{N}.json      Python and NumPy RNG states of process N
    trainer_state.json    step, position in the data order, metrics so far, the run's identity
    config.yaml           the full run config
    manifest.json         size and sha256 of every other file (see :mod:`elmtune.finetune.checkpoint_integrity`)

Checkpoints written before per-process RNG files hold a single ``rng.pt`` / ``rng.json``; they are still read (every
process then restores the same states, as they were saved).

It is published with :class:`~elmtune.output_paths.StagedDirectory`: written to a hidden sibling, fsynced, then
renamed into place. A process killed mid-write leaves only the hidden sibling, which is ignored and cleaned up by the
next save; the previous checkpoint stays intact.

Checkpoints of earlier versions also hold ``trainable.safetensors`` (the same tensors as ``adapter/``); it is not read,
and they resume from their ``adapter/`` like any other.
"""

from __future__ import annotations

import json
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
from elmtune.finetune.checkpoint_integrity import ADAPTER_DIR, write_manifest
from elmtune.output_paths import StagedDirectory
from elmtune.recipe_yaml import load_recipe_yaml

_STEP_DIR = re.compile(r"^step-(\d{8})$")


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


def save_checkpoint(
    root: Path,
    state: TrainerState,
    *,
    write_adapter: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
    keep_last: int | None = None,
    rng: list[RngStates] | None = None,
) -> Path:
    """Write a checkpoint for ``state.step`` atomically and prune older ones.

    Args:
        root: The run's ``checkpoints/`` directory.
        state: Counters to store.
        write_adapter: Writes the adapter (PEFT format) into the directory it is given.
        optimizer: Optimizer whose state is saved.
        scheduler: LR scheduler whose state is saved.
        config: The full run config (written as YAML).
        keep_last: Keep only this many newest checkpoints (None: keep all).
        rng: The RNG states of every process, by rank (gathered by the caller); None stores this process's as rank 0.

    Returns:
        The checkpoint directory.

    Raises:
        OutputWriteError: The disk filled up while writing (nothing of this checkpoint is left behind).
    """
    root.mkdir(parents=True, exist_ok=True)
    staged = StagedDirectory(root / f"step-{state.step:08d}", overwrite=True)  # a re-saved step is replaced whole
    with staged as directory:
        write_adapter(directory / ADAPTER_DIR)
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
        (directory / "scheduler.json").write_text(json.dumps(scheduler.state_dict(), default=_not_serializable))
        for rank, (tensors, plain) in enumerate(rng if rng is not None else [rng_states()]):
            tensor_name, json_name = rng_file_names(rank)
            torch.save(tensors, directory / tensor_name)
            (directory / json_name).write_text(json.dumps(plain))
        (directory / "trainer_state.json").write_text(json.dumps(state.__dict__, indent=1))
        (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        write_manifest(directory)
        final = staged.commit()
    for stale in root.iterdir():
        if stale.name.startswith(".") and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)  # staged by a process killed mid-write
    if keep_last is not None:
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _not_serializable(value: object) -> Any:
    raise TypeError(f"scheduler state holds a non-JSON value {type(value).__name__}; use a LambdaLR over Schedule")


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read; the caller restores adapter, optimizer, scheduler and RNG states from it."""

    path: Path
    state: TrainerState
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    config: dict[str, Any]

    @property
    def adapter_dir(self) -> Path:
        """The checkpoint's adapter (PEFT format)."""
        return self.path / ADAPTER_DIR


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
    return state, load_recipe_yaml(path / "config.yaml")


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint's counters, config, optimizer and scheduler states (RNG states: :func:`read_rng_states`)."""
    state, config = read_checkpoint_meta(path)
    optimizer = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    scheduler = json.loads((path / "scheduler.json").read_text())
    return LoadedCheckpoint(path, state, optimizer, scheduler, config)
