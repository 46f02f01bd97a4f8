"""Tokenising (context, continuation) pairs exactly as lm-eval's Hugging Face backend does.

lm-eval moves the context's trailing whitespace to the front of the continuation, encodes context + continuation as one
string, and takes as continuation tokens everything after the context's own token count. The model then reads
``context_tokens + continuation_tokens`` (not the joint encoding). An empty context is replaced by the prefix token
(BOS). Reproducing this is what makes per-example predictions identical to lm-eval's.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.tokenization_utils_base import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EncodedRequest:
    """One scored continuation in token ids: the model reads ``context + continuation[:-1]``."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode(tokenizer: PreTrainedTokenizerBase, text: str, add_bos: bool | None) -> list[int]:
    """Encode like lm-eval's ``tok_encode``: ``add_bos`` chooses special tokens (None: the tokenizer's default).

    A text that already starts with the BOS string gets no second BOS.
    """
    kwargs = {} if add_bos is None else {"add_special_tokens": add_bos}
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        kwargs = {"add_special_tokens": False}
    return list(tokenizer.encode(text, **kwargs))


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that stands in for an empty context: BOS, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand in for an empty context")
    return token


def encode_request(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, add_bos: bool | None = True
) -> EncodedRequest:
    """Tokenise one (context, continuation) pair with lm-eval's semantics.

    Args:
        tokenizer: The model's tokenizer.
        context: Conditioning text; its trailing whitespace moves to the continuation.
        continuation: The scored text.
        add_bos: Add special tokens (BOS) to the context; None keeps the tokenizer's default.

    Returns:
        Context and continuation token ids.
    """
    if context == "":
        cont = encode(tokenizer, continuation, add_bos=False)
        prefix = prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:
            return EncodedRequest(tuple(cont[:1]), tuple(cont[1:]))
        return EncodedRequest((prefix,), tuple(cont))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation, add_bos)
    context_ids = encode(tokenizer, context, add_bos)
    return EncodedRequest(tuple(context_ids), tuple(whole[len(context_ids) :]))
