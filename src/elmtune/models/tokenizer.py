"""The OpenELM tokenizer (Llama-2 SentencePiece, 32000 pieces), bundled so no gated download is ever needed.

Padding is decided here and nowhere else: pad id 0 (``<unk>``), right padding. Padded positions are always masked
out of attention (``attention_mask``) and out of the loss (label -100) by the code that builds batches.

The bundled ``tokenizer_config.json`` carries OpenELM-Instruct's chat template (``chat_template``, Apple's Jinja
template, equal to the ``chat`` training format), so ``apply_chat_template`` works on it and on every directory that
copies it; :func:`add_chat_template` gives the same template to a copied tokenizer that has none.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

PAD_TOKEN_ID = 0
"""Padding id: ``<unk>``; OpenELM has no pad token, and EOS must never pad (it is a training target)."""

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_CONFIG_FILE = "tokenizer_config.json"
_TEMPLATE_FILE = "chat_template.jinja"
"""Where transformers 5 saves a tokenizer's chat template, next to (and instead of) ``tokenizer_config.json``."""


def bundled_tokenizer_dir() -> Path:
    """Directory of the Llama-2 tokenizer files shipped inside the package."""
    return Path(str(resources.files("elmtune.models") / "tokenizer_files"))


def bundled_chat_template() -> str:
    """OpenELM-Instruct's Jinja chat template, as the bundled ``tokenizer_config.json`` carries it."""
    config = json.loads((bundled_tokenizer_dir() / _CONFIG_FILE).read_text(encoding="utf-8"))
    return config["chat_template"]


def add_chat_template(tokenizer_dir: Path) -> bool:
    """Give a tokenizer directory OpenELM-Instruct's chat template when it has none.

    Args:
        tokenizer_dir: A directory with ``tokenizer_config.json``; its other keys are kept as they are.

    Returns:
        Whether the template was added (False: the directory has a template already, or no tokenizer config).
    """
    config_file = tokenizer_dir / _CONFIG_FILE
    if not config_file.is_file() or (tokenizer_dir / _TEMPLATE_FILE).is_file():
        return False
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("chat_template"):
        return False
    config["chat_template"] = bundled_chat_template()
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


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

    from elmtune.models.model_names import check_model_name
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
