"""The run's tokenizer beside its adapter: ``final/`` and every checkpoint's ``adapter/`` carry it.

The tokenizer the run trained with is saved with ``save_pretrained`` next to the adapter files, its chat template in
``tokenizer_config.json`` (OpenELM-Instruct's when the tokenizer has none, as for merged directories), so
``AutoTokenizer.from_pretrained(adapter_dir).apply_chat_template(...)`` renders the format the run trained on.
Loading an adapter reads only ``adapter_config.json``, ``adapter_model.safetensors`` and ``elmtune_adapter.json``; the
tokenizer files are for the people and tools that use the directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from elmtune.finetune.run_outputs import SaveAdapter


def save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Save ``tokenizer`` into ``directory`` with its chat template inside ``tokenizer_config.json``.

    Args:
        tokenizer: A transformers tokenizer (the run's).
        directory: An existing directory (an adapter being written).
    """
    from elmtune.models.tokenizer import add_chat_template

    tokenizer.save_pretrained(str(directory), save_jinja_files=False)  # the template stays in tokenizer_config.json
    add_chat_template(directory)


def with_tokenizer(save_adapter: SaveAdapter, tokenizer: Any) -> SaveAdapter:
    """``save_adapter``, followed by saving ``tokenizer`` into the same directory (see :func:`save_tokenizer`)."""

    def save(model: nn.Module, directory: Path) -> None:
        save_adapter(model, directory)
        save_tokenizer(tokenizer, directory)

    return save


__all__ = ["save_tokenizer", "with_tokenizer"]
