"""``build.json``: what a build directory holds, per stage: fingerprint, status, timings and output.

It is rewritten (atomically: a temporary sibling renamed into place) whenever a stage starts, ends or fails, so an
interrupted build leaves an accurate record for the next run to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from elmtune.errors import ElmtuneError

BUILD_FILE = "build.json"
FORMAT_VERSION = 1

StageStatus = Literal["running", "done", "failed"]


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    """One stage's entry in ``build.json``.

    Attributes:
        name: The stage name.
        kind: The stage kind.
        fingerprint: SHA-256 of what the stage's result depends on (see :mod:`elmtune.build.fingerprint`).
        covered: What the fingerprint covers, in plain values (settings, inputs, upstream and data digests).
        status: ``running``, ``done`` or ``failed``.
        output: The stage's output, relative to the build directory.
        output_digest: SHA-256 of the output's files, once done.
        started: When the stage last started (UTC).
        finished: When it last ended, done or failed (UTC).
        seconds: How long its last run took.
        error: The error that stopped a failed stage.
    """

    name: str
    kind: str
    fingerprint: str
    covered: dict[str, Any]
    status: StageStatus
    output: str
    output_digest: str | None = None
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass
class BuildRecord:
    """The content of ``build.json``.

    Attributes:
        recipe: The recipe file the build was last run with.
        model: The recipe's base model.
        stages: The stage records by stage name (stages that never started have none).
    """

    recipe: str | None
    model: str
    stages: dict[str, StageRecord] = field(default_factory=dict)

    def save(self, build_dir: Path) -> None:
        """Write ``build_dir/build.json`` atomically."""
        payload = {
            "format": FORMAT_VERSION,
            "recipe": self.recipe,
            "model": self.model,
            "stages": [dataclasses.asdict(record) for record in self.stages.values()],
        }
        handle, name = tempfile.mkstemp(prefix=f".{BUILD_FILE}.", dir=build_dir)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(name, build_dir / BUILD_FILE)

    @classmethod
    def load(cls, build_dir: Path) -> BuildRecord | None:
        """The record in ``build_dir`` (None when it has no ``build.json``).

        Raises:
            ElmtuneError: The file is not a build record this version reads.
        """
        path = build_dir / BUILD_FILE
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            stages = {entry["name"]: StageRecord(**entry) for entry in payload["stages"]}
            return cls(recipe=payload.get("recipe"), model=payload["model"], stages=stages)
        except (ValueError, KeyError, TypeError) as err:
            raise ElmtuneError(
                f"{path} is not a readable build record ({type(err).__name__}: {err}); pass --overwrite to rebuild "
                "every stage"
            ) from None


__all__ = ["BUILD_FILE", "BuildRecord", "StageRecord", "StageStatus", "utc_now"]
