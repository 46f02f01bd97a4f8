"""``ExportSettings``: the settings of a build's ``export`` stage, those of ``elmtune export`` (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from elmtune.config_mapping import require

OUTTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0")
"""Storage types of the weight matrices (``elmtune export --outtype``)."""


@dataclass(frozen=True)
class ExportSettings:
    """How an ``export`` stage writes its GGUF file.

    Attributes:
        outtype: Storage of the weight matrices: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (norms stay f32).
        general_name: ``general.name`` in the file (``elmtune export --name``); default: from the model directory.
        file_name: Name of the file in the stage directory.
        check: Run the file with llama.cpp and compare next-token logits (needs llama-cpp-python).
    """

    outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    general_name: str | None = None
    file_name: str = "model.gguf"
    check: bool = False

    def __post_init__(self) -> None:
        require(
            "export",
            [
                (self.outtype in OUTTYPES, "outtype", f"must be one of {', '.join(OUTTYPES)}, got {self.outtype!r}"),
                (
                    self.file_name.endswith(".gguf") and "/" not in self.file_name and "\\" not in self.file_name,
                    "file_name",
                    f"must be a plain file name ending in .gguf, got {self.file_name!r}",
                ),
            ],
        )


__all__ = ["OUTTYPES", "ExportSettings"]
