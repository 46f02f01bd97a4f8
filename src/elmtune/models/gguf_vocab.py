"""The LLaMA SentencePiece vocabulary of a GGUF file, laid out the way llama.cpp's converter writes it.

OpenELM uses the Llama-2 tokenizer (32000 pieces). llama.cpp stores it as ``tokenizer.ggml.model = "llama"`` with
three parallel arrays (piece bytes, SentencePiece scores, token types) plus the special-token ids and the add-BOS/EOS
flags. Token types follow SentencePiece's own classification: normal 1, unknown 2, control 3, user-defined 4,
unused 5, byte 6. Rows of the embedding that the tokenizer does not cover become ``[PAD{i}]`` (unused, score -10000);
added tokens listed by the tokenizer files (``added_tokens.json``, ``added_tokens_decoder``) replace their ids with
score -1000, as control tokens when they are special and as user-defined tokens otherwise.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from elmtune.models.tokenizer import bundled_tokenizer_dir

UNUSED_SCORE = -10000.0
"""Score of an embedding row that no tokenizer piece covers."""

ADDED_SCORE = -1000.0
"""Score of a token added on top of the SentencePiece model."""

_LOOKS_SPECIAL = re.compile(r"^<\|.*\|>$")


@dataclass(frozen=True)
class GGUFVocab:
    """A SentencePiece vocabulary as GGUF stores it.

    Attributes:
        tokens: Piece of every id, UTF-8 bytes (``"▁the"`` keeps its U+2581 word-boundary mark).
        scores: SentencePiece score of every id.
        token_types: ``gguf.TokenType`` value of every id.
        special_ids: ``{"bos": 1, "eos": 2, "unk": 0, ...}``.
        add_special: ``{"bos": True, "eos": False, ...}``: whether tokenization adds that token.
        chat_template: The tokenizer's chat template, if it has one.
        source: The ``tokenizer.model`` file the pieces come from.
    """

    tokens: list[bytes]
    scores: list[float]
    token_types: list[int]
    special_ids: dict[str, int]
    add_special: dict[str, bool]
    chat_template: str | None
    source: Path

    def __post_init__(self) -> None:
        if not len(self.tokens) == len(self.scores) == len(self.token_types):
            raise ValueError("tokens, scores and token_types must have one entry per id")


def tokenizer_dir_for(model_dir: Path) -> Path:
    """The model directory when it holds its own ``tokenizer.model``, else the bundled Llama-2 tokenizer."""
    return model_dir if (model_dir / "tokenizer.model").is_file() else bundled_tokenizer_dir()


def read_vocab(tokenizer_dir: Path, vocab_size: int) -> GGUFVocab:
    """Read a SentencePiece vocabulary (``tokenizer.model`` plus the optional tokenizer JSON files).

    Args:
        tokenizer_dir: Directory with ``tokenizer.model``; ``tokenizer_config.json``, ``tokenizer.json`` and
            ``added_tokens.json`` are read when present.
        vocab_size: Rows of the model's embedding; the vocabulary has exactly this many entries.

    Returns:
        The vocabulary, with special ids and flags resolved as llama.cpp resolves them.

    Raises:
        FileNotFoundError: If ``tokenizer.model`` is missing.
    """
    from sentencepiece import SentencePieceProcessor

    model_file = tokenizer_dir / "tokenizer.model"
    if not model_file.is_file():
        raise FileNotFoundError(f"no tokenizer.model in {tokenizer_dir}")
    sp = SentencePieceProcessor(model_file=str(model_file))

    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [UNUSED_SCORE] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token_id in range(min(sp.vocab_size(), vocab_size)):
        tokens[token_id] = sp.id_to_piece(token_id).encode("utf-8")
        scores[token_id] = float(sp.get_score(token_id))
        types[token_id] = int(_piece_type(sp, token_id))

    for token_id, text, special in _added_tokens(tokenizer_dir):
        if token_id >= vocab_size:
            continue
        if special is None:  # added_tokens.json: user-defined, text as written
            types[token_id] = int(gguf.TokenType.USER_DEFINED)
        elif special or _LOOKS_SPECIAL.match(text) or text in ("<pad>", "<mask>"):
            types[token_id] = int(gguf.TokenType.CONTROL)
        else:  # a non-special added_tokens_decoder entry: word-boundary marks become spaces
            text = text.replace("\u2581", " ")
            types[token_id] = int(gguf.TokenType.USER_DEFINED)
        tokens[token_id] = text.encode("utf-8")
        scores[token_id] = ADDED_SCORE

    special = _special_vocab(tokenizer_dir, vocab_size)
    return GGUFVocab(
        tokens=tokens,
        scores=scores,
        token_types=types,
        special_ids=dict(special.special_token_ids),
        add_special=dict(special.add_special_token),
        chat_template=special.chat_template if isinstance(special.chat_template, str) else None,
        source=model_file,
    )


def add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    """Write the ``tokenizer.ggml.*`` keys of ``vocab``."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    for kind, token_id in vocab.special_ids.items():
        add_id = getattr(writer, f"add_{kind}_token_id", None)
        if add_id is not None:
            add_id(token_id)
    for kind, value in vocab.add_special.items():
        add_flag = getattr(writer, f"add_add_{kind}_token", None)
        if add_flag is not None:
            add_flag(value)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


def _piece_type(sp: Any, token_id: int) -> gguf.TokenType:
    if sp.is_unknown(token_id):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(token_id):
        return gguf.TokenType.CONTROL
    if sp.is_unused(token_id):
        return gguf.TokenType.UNUSED
    if sp.is_byte(token_id):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _added_tokens(tokenizer_dir: Path) -> list[tuple[int, str, bool | None]]:
    """``(id, text, special)`` of the tokens the tokenizer files add on top of the SentencePiece model.

    ``special`` is None for ``added_tokens.json`` entries, else the ``special`` flag of ``added_tokens_decoder``.
    """
    added: list[tuple[int, str, bool | None]] = []
    added_file = tokenizer_dir / "added_tokens.json"
    if added_file.is_file():
        added += [(int(i), text, None) for text, i in json.loads(added_file.read_text(encoding="utf-8")).items()]
    config_file = tokenizer_dir / "tokenizer_config.json"
    if config_file.is_file():
        decoder = json.loads(config_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        added += [(int(i), entry["content"], bool(entry.get("special"))) for i, entry in decoder.items()]
    return added


def _special_vocab(tokenizer_dir: Path, vocab_size: int) -> gguf.SpecialVocab:
    """Special ids, add-BOS/EOS flags and chat template, resolved by gguf's own reader of tokenizer files."""
    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)  # it warns about template details that do not apply to SentencePiece
    try:
        return gguf.SpecialVocab(tokenizer_dir, load_merges=False, n_vocab=vocab_size)
    finally:
        vocab_logger.setLevel(level)


__all__ = ["ADDED_SCORE", "UNUSED_SCORE", "GGUFVocab", "add_vocab", "read_vocab", "tokenizer_dir_for"]
