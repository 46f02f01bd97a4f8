"""The generation prompt is the text (and the tokens) a ``chat``-template SFT or DPO run trains on."""

import numpy as np
import pytest

from elmtune.datasets import IGNORE_INDEX, ChatExample, Message, PreferenceExample, encode_rendered
from elmtune.datasets.templates import render_preference, render_sft
from elmtune.inference import Prompt, encode_prompt

CONVERSATIONS = {
    "single": (Message("user", "What is 2 + 2?"),),
    "system": (Message("system", "Be brief."), Message("user", "What is 2 + 2?")),
    "multi": (
        Message("user", "Hi there."),
        Message("assistant", "Hello! How can I help?"),
        Message("user", "Name a colour.\nJust one."),
    ),
    "multi-system": (
        Message("system", "You answer in French."),
        Message("user", "Hi."),
        Message("assistant", "Bonjour."),
        Message("user", "Thanks!"),
    ),
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_text_is_the_sft_text_before_the_reply(tokenizer, name):
    turns = CONVERSATIONS[name]
    trained = render_sft(ChatExample((*turns, Message("assistant", "Four."))), "chat").text
    prompt = Prompt(messages=turns).render(tokenizer)
    assert trained == prompt + "Four.</s>\n"
    assert prompt.endswith("</s>\n<|assistant|>\n")


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_tokens_are_the_dpo_prompt_tokens(tokenizer, name):
    turns = CONVERSATIONS[name]
    chosen, _ = render_preference(PreferenceExample(turns, "Four.", "Five."), "chat")
    ids, labels = encode_rendered([chosen], tokenizer)[0]
    targets = np.concatenate([[False], labels != IGNORE_INDEX])  # (L + 1,)
    reply_start = int(np.flatnonzero(targets[1:] & ~targets[:-1])[-1])  # the chosen reply: the last target run
    assert encode_prompt(tokenizer, Prompt(messages=turns).render(tokenizer)) == ids[:reply_start].tolist()
    assert tokenizer.decode(ids[reply_start:], skip_special_tokens=True).strip() == "Four."


def test_hand_written_single_turn(tokenizer):
    prompt = Prompt.from_text("Hi", system="Be brief.")
    assert prompt.render(tokenizer) == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    assert encode_prompt(tokenizer, "Hi")[0] == tokenizer.bos_token_id == 1
    assert encode_prompt(tokenizer, "Hi") == tokenizer("Hi")["input_ids"]  # BOS once, as training adds it


def test_raw_prompt_is_the_text_as_is(tokenizer):
    assert Prompt.from_text("Once upon a time", raw=True).render(tokenizer) == "Once upon a time"


def test_a_conversation_must_end_with_a_user_turn():
    with pytest.raises(ValueError, match="end with a user turn"):
        Prompt(messages=(Message("user", "a"), Message("assistant", "b")))
    with pytest.raises(ValueError, match="either a conversation or raw text"):
        Prompt()
