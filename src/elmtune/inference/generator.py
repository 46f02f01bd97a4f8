"""Replies from a loaded model: transformers' ``generate`` with elmtune's prompts, greedy or sampled, stopping at EOS.

One prompt can be streamed (:func:`generate_reply` with ``on_text``); many prompts are generated in batches with
left padding (:func:`generate_replies`), longest first, and returned in their input order. In fp32 a batched reply is
the reply generated alone: positions come from the attention mask, and padded positions are masked out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from elmtune.inference.prompts import Prompt, encode_prompt
from elmtune.inference.settings import DecodingSettings
from elmtune.inference.streaming import TextPieceStreamer


@dataclass(frozen=True)
class Reply:
    """One generated reply.

    Attributes:
        text: The decoded reply, without the prompt and without EOS.
        token_ids: The generated ids, up to and including EOS when it came.
        stopped_at_eos: Whether the reply ended with EOS (otherwise it ran into ``max_new_tokens``).
    """

    text: str
    token_ids: tuple[int, ...]
    stopped_at_eos: bool


def generation_config(tokenizer: Any, settings: DecodingSettings) -> GenerationConfig:
    """The transformers GenerationConfig of ``settings``: sampling knobs only when sampling, EOS stops."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sampling = (
        {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
        if settings.sampling
        else {}
    )
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.sampling,
        num_beams=1,
        repetition_penalty=settings.repetition_penalty,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **sampling,
    )


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the sampling random numbers for one call, leaving the caller's random state as it was."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _reply(tokenizer: Any, new_ids: list[int]) -> Reply:
    """Cut the generated ids after the first EOS (what follows is padding) and decode them."""
    eos = tokenizer.eos_token_id
    stopped = eos in new_ids
    kept = new_ids[: new_ids.index(eos) + 1] if stopped else new_ids
    return Reply(tokenizer.decode(kept, skip_special_tokens=True), tuple(kept), stopped)


@torch.inference_mode()
def _generate(
    model: PreTrainedModel,
    tokenizer: Any,
    encoded: Sequence[list[int]],
    settings: DecodingSettings,
    streamer: TextPieceStreamer | None = None,
) -> list[Reply]:
    """Generate for prompts already tokenised, left-padded into one batch."""
    device = next(model.parameters()).device
    config = generation_config(tokenizer, settings)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), config.pad_token_id, dtype=torch.long)  # (B, width)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (B, width)
    for row, ids in enumerate(encoded):  # left padding: every prompt ends at the last column
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    with _seeded(settings.seed, device):
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            streamer=streamer,
        )  # (B, width + new)
    return [_reply(tokenizer, output[row, width:].tolist()) for row in range(len(encoded))]


def generate_reply(
    model: PreTrainedModel,
    tokenizer: Any,
    prompt: Prompt,
    settings: DecodingSettings | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Reply:
    """Generate one reply.

    Args:
        model: A causal LM in eval mode (a peft model with its adapter included).
        tokenizer: Its tokenizer.
        prompt: The conversation or raw text to reply to.
        settings: Decoding settings; default greedy, 256 new tokens at most.
        on_text: Called with each new piece of the reply as it is generated; the pieces concatenate to the reply.

    Returns:
        The reply.
    """
    settings = settings or DecodingSettings()
    streamer = TextPieceStreamer(tokenizer, on_text) if on_text is not None else None
    return _generate(model, tokenizer, [encode_prompt(tokenizer, prompt.render(tokenizer))], settings, streamer)[0]


def generate_replies(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    settings: DecodingSettings | None = None,
    *,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> list[Reply]:
    """Generate replies to many prompts, ``batch_size`` at a time with left padding, longest prompts first.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        prompts: The prompts.
        settings: Decoding settings (one seed covers each batch as a whole).
        batch_size: Prompts per ``generate`` call.
        on_batch: Called with the number of replies finished so far, after each batch.

    Returns:
        One reply per prompt, in the order of ``prompts``.
    """
    settings = settings or DecodingSettings()
    encoded = [encode_prompt(tokenizer, prompt.render(tokenizer)) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    replies: dict[int, Reply] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for index, reply in zip(batch, _generate(model, tokenizer, [encoded[i] for i in batch], settings), strict=True):
            replies[index] = reply
        if on_batch is not None:
            on_batch(len(replies))
    return [replies[i] for i in range(len(prompts))]


__all__ = ["Reply", "generate_replies", "generate_reply", "generation_config"]
