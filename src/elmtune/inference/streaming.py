"""Streamed replies: a transformers streamer that hands out text pieces as tokens are generated.

The pieces concatenate to exactly the decoded reply. Each time a token arrives, the whole reply so far is decoded
again and only the new suffix is handed out; it is held back while it ends in an incomplete UTF-8 sequence (a byte
token decoded as U+FFFD), so no piece has to be taken back later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

_INCOMPLETE = "\ufffd"


class TextPieceStreamer(BaseStreamer):
    """Calls ``on_text`` with each new piece of reply text; the prompt (the first ``put``) is skipped.

    Args:
        tokenizer: The tokenizer that decodes the reply (special tokens such as EOS are not shown).
        on_text: Called with every new, non-empty piece, in order.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.token_ids: list[int] = []
        self.shown = ""
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """Receive the prompt ids (first call, skipped) or the next token: (1,) or (1, 1) ids of one sequence."""
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("streaming needs a batch of one sequence")
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.token_ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._show(final=False)

    def end(self) -> None:
        """Hand out whatever text is still held back."""
        self._show(final=True)

    def _show(self, *, final: bool) -> None:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if not text.startswith(self.shown) or (text.endswith(_INCOMPLETE) and not final):
            return
        piece, self.shown = text[len(self.shown) :], text
        if piece:
            self.on_text(piece)


__all__ = ["TextPieceStreamer"]
