"""Write a merged checkpoint directory in Apple's layout, atomically.

Layout::

    config.json                    OpenELM config with the per-layer lists; share_input_output_layers as merged
    model.safetensors              Apple's keys (no lm_head.weight while the head is tied), or shards + index
    tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json, NOTICE   (Llama-2 tokenizer)
    README.md                      model card: base, adapter, data, merge settings, check numbers
    merge_report.json              the same facts, machine-readable

The merge writes everything into a hidden sibling directory (:class:`elmtune.output_paths.StagedDirectory`) that is
renamed to the final name only when the merge succeeded and was checked; on any failure it is deleted, so no
half-written or unverified directory is ever left looking like a valid checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

CARD_FILE = "README.md"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "NOTICE",
)
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
    """Copy the tokenizer files from ``source_dir`` when it has them, else the bundled Llama-2 tokenizer.

    A copied tokenizer without a chat template gets OpenELM-Instruct's, the ``chat`` training format.
    """
    from elmtune.models.tokenizer import add_chat_template, bundled_tokenizer_dir

    source = source_dir if source_dir is not None and (source_dir / "tokenizer.json").is_file() else None
    source = source or bundled_tokenizer_dir()
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
            copied.append(name)
    add_chat_template(out_dir)
    return copied


__all__ = ["CARD_FILE", "TOKENIZER_FILES", "copy_tokenizer", "write_config"]
