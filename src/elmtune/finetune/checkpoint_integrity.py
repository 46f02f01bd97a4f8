"""Is a checkpoint directory intact? A manifest of sizes and hashes written with it, and a structural check.

:func:`write_manifest` records the size and sha256 of every file of a checkpoint in ``manifest.json`` just before
the checkpoint is renamed into place. :func:`checkpoint_problem` compares the files with it (a missing, truncated or
garbled file is named) and then parses every file a resume reads, so checkpoints written before manifests existed
are checked too. The adapter is read from ``adapter/`` (PEFT format); a ``trainable.safetensors`` that checkpoints of
earlier versions also hold is covered by their manifest but not read. The tokenizer files saved beside the adapter
(``adapter/tokenizer.json``, ``adapter/tokenizer_config.json``) are covered by the manifest like every other file, but
are not required: a resume does not read them, and checkpoints of earlier versions have none.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from elmtune.adapters.adapter_dir import CONFIG_FILE, WEIGHTS_FILE
from elmtune.file_digest import sha256_file

MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
"""The checkpoint's adapter in PEFT format: what users load, and what a resume reads."""
_PARSE_ERRORS = (OSError, ValueError, RuntimeError, EOFError, TypeError, KeyError, pickle.UnpicklingError)


def write_manifest(directory: Path) -> None:
    """Write ``directory/manifest.json``: size and sha256 of every file below ``directory`` (by relative path)."""
    files = {
        path.relative_to(directory).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def _manifest_problem(path: Path) -> str | None:
    try:
        recorded = json.loads((path / MANIFEST).read_text())["files"]
        entries = [(name, int(entry["size"]), str(entry["sha256"])) for name, entry in recorded.items()]
    except (*_PARSE_ERRORS, AttributeError):
        return f"{MANIFEST} is unreadable"
    for name, size, sha256 in entries:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes where {size} were written"
        if sha256_file(file) != sha256:
            return f"{name} does not match the sha256 recorded when it was written"
    return None


def _parse(file: Path) -> None:
    if file.suffix == ".json":
        json.loads(file.read_text())
    elif file.suffix == ".yaml":
        yaml.safe_load(file.read_text())
    elif file.suffix == ".pt":
        torch.load(file, weights_only=True, map_location="cpu")
    else:
        load_file(str(file))


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint directory ``path`` cannot be resumed from, or None when it is intact.

    Args:
        path: A ``checkpoints/step-XXXXXXXX`` directory.

    Returns:
        A short reason naming the first bad file (missing, truncated, garbled, unparsable), or None.
    """
    if (path / MANIFEST).is_file():
        problem = _manifest_problem(path)
        if problem:
            return problem
    rng = sorted(p.name for p in path.glob("rng-rank*.pt")) or ["rng.pt"]
    adapter = [f"{ADAPTER_DIR}/{CONFIG_FILE}", f"{ADAPTER_DIR}/{WEIGHTS_FILE}"]
    required = ["trainer_state.json", "config.yaml", "scheduler.json", "optimizer.pt", *adapter, *rng]
    required += [name.replace(".pt", ".json") for name in rng]
    for name in required:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        try:
            _parse(file)
        except (*_PARSE_ERRORS, yaml.YAMLError, SafetensorError) as err:
            return f"{name} is unreadable ({type(err).__name__})"
    try:
        step = int(json.loads((path / "trainer_state.json").read_text())["step"])
    except (*_PARSE_ERRORS, AttributeError):
        return "trainer_state.json holds no step"
    if path.name.startswith("step-") and path.name != f"step-{step:08d}":
        return f"trainer_state.json says step {step}"
    return None
