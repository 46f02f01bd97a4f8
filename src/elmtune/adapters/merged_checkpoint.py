"""Write a merged checkpoint directory in Apple's layout, atomically.

Layout::

    config.json                    OpenELM config with the per-layer lists; share_input_output_layers as merged
    model.safetensors              Apple's keys (no lm_head.weight while the head is tied), or shards + index
    tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json, NOTICE   (Llama-2 tokenizer)
    README.md                      model card: base, adapter, data, merge settings, check numbers
    merge_report.json              the same facts, machine-readable

Everything is written into a hidden sibling directory (``.NAME.partial-XXXX``, :class:`StagedDirectory` from
:mod:`elmtune.output_paths`, re-exported here) that is renamed to the final name only when the caller says the merge
succeeded (:meth:`StagedDirectory.commit`); on any failure it is deleted, so no half-written or unverified directory
is ever left looking like a valid checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from elmtune.output_paths import OutputExistsError, StagedDirectory

REPORT_FILE = "merge_report.json"
CARD_FILE = "README.md"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "NOTICE")
"""Files copied from the tokenizer directory (those that exist)."""


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
