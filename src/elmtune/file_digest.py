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


def data_fingerprint(path: str) -> str | None:
    """sha256 of a local data file (or of every file of a data directory, with their relative paths).

    Returns:
        The hex digest, or None when ``path`` is not local (a hub dataset id).
    """
    source = Path(path)
    if source.is_file():
        files = [(source.name, source)]
    elif source.is_dir():
        files = [(p.relative_to(source).as_posix(), p) for p in sorted(source.rglob("*")) if p.is_file()]
    else:
        return None
    digest = hashlib.sha256()
    for name, file in files:
        if source.is_dir():  # a renamed or moved file changes the fingerprint of a directory
            digest.update(name.encode() + b"\0")
        update_with_file(digest, file)
    return digest.hexdigest()


__all__ = ["data_fingerprint", "sha256_file", "update_with_file"]
