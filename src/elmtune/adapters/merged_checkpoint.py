"""Write a merged checkpoint directory in Apple's layout, atomically.

Layout::

    config.json                    OpenELM config with the per-layer lists; share_input_output_layers as merged
    model.safetensors              Apple's keys (no lm_head.weight while the head is tied), or shards + index
    tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json, NOTICE   (Llama-2 tokenizer)
    README.md                      model card: base, adapter, data, merge settings, check numbers
    merge_report.json              the same facts, machine-readable

Everything is written into a hidden sibling directory (``.NAME.partial-XXXX``) that is renamed to the final name
only when the caller says the merge succeeded (:meth:`StagedDirectory.commit`); on any failure it is deleted, so no
half-written or unverified directory is ever left looking like a valid checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from elmtune.errors import ElmtuneError

REPORT_FILE = "merge_report.json"
CARD_FILE = "README.md"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "NOTICE")
"""Files copied from the tokenizer directory (those that exist)."""


class OutputExistsError(ElmtuneError):
    """The output directory exists and overwriting was not requested."""


class StagedDirectory:
    """A hidden temporary directory next to ``target`` that becomes ``target`` on :meth:`commit`.

    Use as a context manager: leaving the block without ``commit()`` (an exception, a failed check) deletes it.

    Args:
        target: The final directory.
        overwrite: Replace an existing ``target`` on commit; otherwise an existing non-empty ``target`` is refused
            up front.

    Raises:
        OutputExistsError: ``target`` exists, is not empty, and ``overwrite`` is false; or it is a file.
    """

    def __init__(self, target: str | Path, *, overwrite: bool = False) -> None:
        self.target = Path(target).expanduser()
        if self.target.exists() and not self.target.is_dir():
            raise OutputExistsError(f"output {self.target} exists and is not a directory")
        if self.target.is_dir() and any(self.target.iterdir()) and not overwrite:
            raise OutputExistsError(f"output directory {self.target} exists and is not empty; pass --overwrite")
        self.overwrite = overwrite
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        umask = os.umask(0)
        os.umask(umask)
        self.path.chmod(0o777 & ~umask)  # mkdtemp makes it private; the checkpoint gets the usual permissions
        return self.path

    def commit(self) -> Path:
        """Move the staged directory into place (replacing an old ``target`` when allowed)."""
        if self.path is None:
            raise RuntimeError("commit() outside the with block")
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        self.path = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def write_config(out_dir: Path, config: Any, dtype: torch.dtype, *, tied: bool) -> dict[str, Any]:
    """Write ``config.json`` (a copy of ``config`` with the output dtype and head tying) and return it as a dict."""
    out_config = copy.deepcopy(config)
    out_config.share_input_output_layers = tied
    out_config.dtype = dtype
    if not getattr(out_config, "architectures", None):
        out_config.architectures = ["OpenELMForCausalLM"]
    out_config.save_pretrained(str(out_dir))
    return json.loads((out_dir / "config.json").read_text(encoding="utf-8"))


def copy_tokenizer(out_dir: Path, source_dir: Path | None = None) -> list[str]:
    """Copy the tokenizer files from ``source_dir`` when it has them, else the bundled Llama-2 tokenizer."""
    from elmtune.models.tokenizer import bundled_tokenizer_dir

    source = source_dir if source_dir is not None and (source_dir / "tokenizer.json").is_file() else None
    source = source or bundled_tokenizer_dir()
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
            copied.append(name)
    return copied


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """Write ``merge_report.json``."""
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


__all__ = [
    "CARD_FILE",
    "REPORT_FILE",
    "TOKENIZER_FILES",
    "OutputExistsError",
    "StagedDirectory",
    "copy_tokenizer",
    "write_config",
    "write_report",
]
