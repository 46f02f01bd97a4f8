"""Prompts byte for byte (spec 7.2 / 7.9), candidate parsing on every shipped task file, answer extraction."""

import json
import re
from pathlib import Path

import pytest

from elmtune.errors import ElmtuneError
from elmtune.evaluation.commonsense import apple_question
from elmtune.evaluation.prompts import (
    alpaca_prompt,
    answer_pattern,
    extract_answer,
    llm_adapters_eval_prompt,
    parse_candidates,
    response_text,
)

SP16 = " " * 16
LLM_ADAPTERS = Path(__file__).resolve().parents[1] / "fixtures" / "commonsense" / "llm_adapters"
TASKS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Challenge", "ARC-Easy", "openbookqa")


def test_apple_context_is_the_training_prompt_with_an_empty_response_byte_for_byte():
    # Spec 7.2: preamble + two trailing spaces, an empty line, then 16-space-indented lines; the separator line before
    # "### Response:" is 16 spaces; the context ends with "### Response:\n" and 16 spaces (spec 7.9 item 2).
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
        "\n"
        "                ### Instruction:\n"
        "                Is the sky blue?\n\nAnswer format: true/false\n"
        "                \n"
        "                ### Response:\n"
        "                "
    )
    assert alpaca_prompt("Is the sky blue?\n\nAnswer format: true/false") == expected
    question = apple_question({"instruction": "Is the sky blue?\n\nAnswer format: true/false", "answer": "true"}, "b")
    assert {ctx for ctx, _ in question.requests} == {expected}
    assert [cont for _, cont in question.requests] == ["the correct answer is true", "the correct answer is false"]


def test_with_input_training_prompt_has_one_trailing_space():
    text = alpaca_prompt("Do it.", "the input")
    assert text.startswith(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n"
    )
    assert text.endswith(
        f"{SP16}Do it.\n{SP16}\n{SP16}### Input:\n{SP16}the input\n{SP16}\n{SP16}### Response:\n{SP16}"
    )


def test_llm_adapters_generation_prompt_byte_for_byte():
    # Spec 7.2: truly empty separator lines, one trailing space after the no-input preamble, ends with 16 spaces.
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
        "\n"
        "                ### Instruction:\n"
        "                Pick one.\n"
        "\n"
        "                ### Response:\n"
        "                "
    )
    assert llm_adapters_eval_prompt("Pick one.") == expected


def _rows(task):
    return json.loads((LLM_ADAPTERS / task / "test.json").read_text())


@pytest.mark.parametrize("task", TASKS)
def test_candidates_parse_on_every_row_of_every_shipped_task_file(task):
    rows = _rows(task)
    assert len(rows) == 40
    for row in rows:
        candidates = parse_candidates(row["instruction"])
        assert row["answer"] in candidates
        if task == "boolq":
            assert candidates == ["true", "false"]
            continue
        # Independent count: the options the instruction lists as "Answer1:", "Ending2:", "Option1:", "Solution2:" ...
        listed = re.findall(r"\b(Answer|Ending|Option|Solution)(\d):", row["instruction"])
        word = listed[0][0].lower()
        assert candidates == [f"{word}{n}" for n in range(1, len(listed) + 1)]
        assert row["output"] == f"the correct answer is {row['answer']}"


def test_unparseable_instruction_is_a_clear_error():
    with pytest.raises(ElmtuneError, match="Answer format"):
        parse_candidates("What is two plus two?")


def test_extraction_takes_the_first_hit_of_the_task_vocabulary():
    assert extract_answer("the correct answer is answer3, not answer1", answer_pattern("ARC-Easy", [])) == "answer3"
    assert extract_answer("I think false. Or true.", answer_pattern("boolq", [])) == "false"
    assert extract_answer("no idea", answer_pattern("piqa", [])) == ""
    # Unknown task: the parsed candidates are the vocabulary (longest first, so option10 is not read as option1).
    assert extract_answer("option10!", answer_pattern("mine", [f"option{i}" for i in range(1, 11)])) == "option10"


def test_response_text_is_what_follows_the_first_response_marker():
    decoded = llm_adapters_eval_prompt("Q?") + "the correct answer is true\n### Response: junk"
    assert response_text(decoded) == "the correct answer is true"
