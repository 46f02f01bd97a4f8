"""The chat session keeps the conversation: each prompt is the whole history in the chat format."""

from elmtune.datasets import ChatExample, Message
from elmtune.datasets.templates import render_sft
from elmtune.inference import ChatSession, DecodingSettings, Prompt, generate_reply


def test_second_turn_prompt_holds_the_first_exchange_and_reset_forgets_it(loaded):
    model, tokenizer = loaded
    settings = DecodingSettings(max_new_tokens=6)
    session = ChatSession(model, tokenizer, settings, system="Be brief.")
    first = session.reply("Hi!")
    second = session.reply("And then?")
    conversation = (
        Message("system", "Be brief."),
        Message("user", "Hi!"),
        Message("assistant", first.text),
        Message("user", "And then?"),
    )
    assert session.history == [*conversation, Message("assistant", second.text)]
    assert second == generate_reply(model, tokenizer, Prompt(messages=conversation), settings)
    trained = render_sft(ChatExample((*conversation, Message("assistant", second.text))), "chat").text
    assert trained == Prompt(messages=conversation).render(tokenizer) + second.text + "</s>\n"
    session.reset()
    assert session.history == [Message("system", "Be brief.")]
    assert session.reply("Hi!") == first
