"""SHA-256 of files, read in 1 MiB blocks: data fingerprints, checkpoint manifests, evaluation provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def update_with_file(digest: Any, path: Path) -> None:
    """Feed the bytes of ``path`` to a ``hashlib`` object, one block at a time."""
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()


__all__ = ["sha256_file", "update_with_file"]
