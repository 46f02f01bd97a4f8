"""Templates against transcriptions of the original sources (CoreNet, LLM-Adapters, Apple's DPO recipe YAML)."""

import json

import pytest
import yaml

from elmtune.datasets import (
    OPENELM_INSTRUCT_CHAT_TEMPLATE,
    ChatExample,
    CompletionExample,
    InstructionExample,
    Message,
    PreferenceExample,
    TextExample,
    alpaca_prompt,
    llm_adapters_eval_prompt,
    load_sft_examples,
    render_preference,
    render_sft,
)

# CoreNet corenet/data/datasets/language_modeling/commonsense_170k.py::generate_prompt_and_response (identical to
# LLM-Adapters finetune.py::generate_prompt at 8166572), one source line per string.
CORENET_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "                \n"
    "                ### Response:\n"
    "                {output}"
)
CORENET_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "                \n"
    "                ### Input:\n"
    "                {input}\n"
    "                \n"
    "                ### Response:\n"
    "                {output}"
)
# LLM-Adapters commonsense_evaluate.py::generate_prompt.
LA_EVAL_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Response:\n"
    "                "
)
LA_EVAL_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Input:\n"
    "                {input}\n"
    "\n"
    "                ### Response:\n"
    "                "
)
# The chat_template line of CoreNet projects/openelm/instruction_tuning/openelm-instruct.yaml, verbatim.
APPLE_YAML_LINE = (
    r"""chat_template: "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + """
    r"""message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + """
    r"""message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + """
    r"""message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ """
    r"""'<|assistant|>' }}\n{% endif %}\n{% endfor %}" """
)


def _fill(template, **fields):
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    return template


def test_training_prompt_byte_for_byte_on_real_rows(data_dir):
    examples, _ = load_sft_examples(data_dir / "commonsense_train_sample200.json")
    for e in examples:
        expected = _fill(CORENET_NO_INPUT, instruction=e.instruction, output=e.output)
        assert render_sft(e).text == expected + "</s>"
        assert alpaca_prompt(e.instruction) == _fill(CORENET_NO_INPUT, instruction=e.instruction, output="")


def test_training_prompt_spec_properties():
    text = alpaca_prompt("line one\nline two")
    lines = text.split("\n")
    assert lines[0].endswith("request.  ") and not lines[0].endswith("   ")  # two trailing spaces
    assert lines[1] == ""
    assert lines[2] == " " * 16 + "### Instruction:"
    assert lines[3] == " " * 16 + "line one" and lines[4] == "line two"  # only the first line is indented
    assert lines[5] == " " * 16 and lines[6] == " " * 16 + "### Response:" and lines[7] == " " * 16
    with_input = alpaca_prompt("Do it.", "ctx")
    assert with_input == _fill(CORENET_WITH_INPUT, instruction="Do it.", input="ctx", output="")
    assert with_input.split("\n")[0].endswith("request. ") and not with_input.split("\n")[0].endswith("  ")


def test_eval_prompt_is_the_llm_adapters_variant():
    assert llm_adapters_eval_prompt("Q?") == _fill(LA_EVAL_NO_INPUT, instruction="Q?")
    assert llm_adapters_eval_prompt("Q?", "ctx") == _fill(LA_EVAL_WITH_INPUT, instruction="Q?", input="ctx")
    assert llm_adapters_eval_prompt("Q?") != alpaca_prompt("Q?")
    assert llm_adapters_eval_prompt("Q?").endswith("### Response:\n" + " " * 16)


def test_chat_template_is_apples_and_renders_like_transformers(tokenizer, data_dir):
    assert yaml.safe_load(APPLE_YAML_LINE)["chat_template"] == OPENELM_INSTRUCT_CHAT_TEMPLATE
    rows = [json.loads(line) for line in (data_dir / "chat_multiturn_sample.jsonl").read_text().splitlines()]
    rows.append({"messages": [{"role": "system", "content": "Be brief."}, *rows[0]["messages"]]})
    for row in rows:
        messages = tuple(Message(m["role"], m["content"]) for m in row["messages"])
        reference = tokenizer.apply_chat_template(
            row["messages"], chat_template=OPENELM_INSTRUCT_CHAT_TEMPLATE, tokenize=False
        )
        assert render_sft(ChatExample(messages), "chat").text == reference
        last_user = max(i for i, m in enumerate(row["messages"]) if m["role"] == "user")
        prompt = row["messages"][: last_user + 1]
        with_generation_prompt = tokenizer.apply_chat_template(
            prompt, chat_template=OPENELM_INSTRUCT_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        chosen, _ = render_preference(PreferenceExample(messages[: last_user + 1], "yes", "no"))
        assert chosen.text == with_generation_prompt + "yes</s>\n"


def test_render_segments():
    alpaca = render_sft(InstructionExample("Q?", "the correct answer is true", answer="true"))
    assert alpaca.text == _fill(CORENET_NO_INPUT, instruction="Q?", output="the correct answer is true") + "</s>"
    assert [s.text for s in alpaca.segments if s.target] == ["the correct answer is true</s>"]

    chat = render_sft(
        ChatExample((Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d")))
    )
    assert chat.text == "<|user|>\na</s>\n<|assistant|>\nb</s>\n<|user|>\nc</s>\n<|assistant|>\nd</s>\n"
    assert [s.text for s in chat.segments if s.target] == ["b</s>", "d</s>"]
    assert [chat.text[a:b] for a, b in chat.target_spans()] == ["b</s>", "d</s>"]

    assert render_sft(TextExample("story")).segments[0].text == "story</s>"
    plain = render_sft(CompletionExample("2+2=", "4"))
    assert plain.text == "2+2=4</s>" and [s.target for s in plain.segments] == [False, True]
    as_chat = render_sft(InstructionExample("Q?", "A.", input="ctx"), "chat", system_prompt="S")
    assert as_chat.text == "<|system|>\nS</s>\n<|user|>\nQ?\n\nctx</s>\n<|assistant|>\nA.</s>\n"
    with pytest.raises(ValueError, match="cannot render a TextExample"):
        render_sft(TextExample("x"), "alpaca")
    with pytest.raises(ValueError, match="unknown template"):
        render_sft(TextExample("x"), "zephyr")


def test_render_preference_equals_full_conversation():
    pair = PreferenceExample((Message("user", "Q?"),), chosen="yes", rejected="no")
    chosen, rejected = render_preference(pair)
    assert chosen.text == "<|user|>\nQ?</s>\n<|assistant|>\nyes</s>\n"
    assert rejected.text == "<|user|>\nQ?</s>\n<|assistant|>\nno</s>\n"
    assert [s.text for s in chosen.segments if s.target] == ["yes</s>"]
    chosen, _ = render_preference(pair, "alpaca")
    assert chosen.text == _fill(CORENET_NO_INPUT, instruction="Q?", output="yes") + "</s>"
    multi = PreferenceExample((Message("user", "a"), Message("assistant", "b"), Message("user", "c")), "y", "n")
    with pytest.raises(ValueError, match="single-turn prompt"):
        render_preference(multi, "plain")
