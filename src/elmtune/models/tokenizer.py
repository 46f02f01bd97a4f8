"""The OpenELM tokenizer (Llama-2 SentencePiece, 32000 pieces), bundled so no gated download is ever needed.

Padding is decided here and nowhere else: pad id 0 (``<unk>``), right padding. Padded positions are always masked
out of attention (``attention_mask``) and out of the loss (label -100) by the code that builds batches.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

PAD_TOKEN_ID = 0
"""Padding id: ``<unk>``; OpenELM has no pad token, and EOS must never pad (it is a training target)."""

BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def bundled_tokenizer_dir() -> Path:
    """Directory of the Llama-2 tokenizer files shipped inside the package."""
    return Path(str(resources.files("elmtune.models") / "tokenizer_files"))


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


def load_tokenizer(path_or_id: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer with elmtune's padding convention.

    Args:
        path_or_id: ``None`` for the bundled Llama-2 tokenizer; a directory, which is used if it holds tokenizer files
            (OpenELM checkpoints usually do not, and then the bundled tokenizer is used); or a hub id of a tokenizer.
            OpenELM hub ids and presets resolve to the bundled tokenizer, because Apple ships none.

    Returns:
        A fast tokenizer with ``pad_token_id == 0`` and right padding; BOS is added, EOS is not. The bundled one
        encodes plain text exactly as Llama-2's ``tokenizer.model`` (SentencePiece) does.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from elmtune.models.loading import check_model_name
    from elmtune.models.presets import preset_name

    source: Path | str = bundled_tokenizer_dir()
    if path_or_id is not None:
        check_model_name(str(path_or_id))
        candidate = Path(path_or_id)
        if candidate.is_dir():
            if _has_tokenizer(candidate):
                source = candidate
        elif preset_name(str(path_or_id)) is None:
            source = str(path_or_id)
    if source == bundled_tokenizer_dir():
        # Built straight from tokenizer.json: SentencePiece-exact (see tokenizer_files/SOURCE.md).
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(source))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(PAD_TOKEN_ID)
    tokenizer.padding_side = "right"
    return tokenizer
