"""Apple's and the generic ``mc`` protocol: prompts byte for byte (spec 7.2 / 7.9), candidate parsing on every shipped
task file, Apple's questions and seeded subset, and ``mc`` files against a hand-written reference loop (lm-eval's
multiple_choice recipe, by hand)."""

import json
import random
import re
from pathlib import Path

import pytest
import torch

from elmtune.datasets.templates import alpaca_prompt
from elmtune.errors import ElmtuneError
from elmtune.evaluation.config import APPLE_SEED, EvalConfig, MCFormat
from elmtune.evaluation.protocols import apple_question, apple_subset, mc_question, parse_candidates, run_mc
from elmtune.evaluation.scoring import LoglikelihoodScorer

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


def test_apple_acc_norm_counts_the_continuation_without_the_moved_whitespace():
    row = {"instruction": "Pick.\n\nAnswer format: answer1/answer2/answer3", "answer": "answer2"}
    question = apple_question(row, "ARC-Easy")
    assert question.norm_lengths == (len("the correct answer is answer1"),) * 3 == (29, 29, 29)
    boolq = apple_question({"instruction": "Q?\n\nAnswer format: true/false", "answer": "false"}, "boolq")
    assert boolq.norm_lengths == (26, 27) and boolq.gold == 1


def test_apple_subset_is_python_random_shuffle_with_seed_83652():
    rows = [{"i": i} for i in range(50)]
    reference = list(rows)
    random.seed(83652)
    random.shuffle(reference)
    assert apple_subset(rows, 7) == reference[:7] and APPLE_SEED == 83652
    assert apple_subset(rows, None) == rows  # no limit: file order, every row


@torch.inference_mode()
def _reference(model, tokenizer, context, continuation):
    """lm-eval's recipe written out: move trailing spaces, encode the joined text, split at the context's length."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    context_ids = tokenizer.encode(stripped)  # BOS added by the tokenizer
    whole = tokenizer.encode(stripped + continuation)
    cont_ids = whole[len(context_ids) :]
    ids = torch.tensor([context_ids + cont_ids])
    logprobs = torch.log_softmax(model(ids[:, :-1]).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(context_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))


def test_mc_file_with_template_matches_a_hand_written_reference(tiny_model, tokenizer, fixtures_dir):
    path = fixtures_dir / "mc" / "copa.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()][:5]
    fmt = MCFormat(template="{{query}} ", target_delimiter="")  # trailing space moves to each choice
    config = EvalConfig(protocol="mc", data=(str(path),), limit=5, mc_format=fmt, progress=False)
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=4, progress=False)
    result = run_mc(scorer, "copa", path, config)
    assert result.n == 5 and [m.metric for m in result.metrics] == ["acc", "acc_norm"]
    correct = []
    for row, example in zip(rows, result.examples, strict=True):
        lls = [_reference(tiny_model, tokenizer, row["query"] + " ", choice) for choice in row["choices"]]
        assert [c["loglikelihood"] for c in example["choices"]] == pytest.approx(lls, abs=2e-4)
        pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
        assert example["pred"] == pred
        correct.append(float(pred == row["gold"]))
    assert result.metrics[0].value == sum(correct) / len(correct)


def test_mc_schema_partial_scoring_rows(tiny_model, tokenizer, fixtures_dir):
    path = fixtures_dir / "mc" / "winogrande_schema.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    question = mc_question(row, 0, "wg", MCFormat())
    assert question.requests == tuple((ctx, " " + row["continuation"]) for ctx in row["context_options"])
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=2, progress=False)
    (scores,) = scorer.score([question])
    lls = [_reference(tiny_model, tokenizer, ctx, " " + row["continuation"]) for ctx in row["context_options"]]
    assert [s.loglikelihood for s in scores] == pytest.approx(lls, abs=2e-4)


def test_mc_row_errors_are_one_line_and_name_the_row():
    with pytest.raises(ElmtuneError, match="row 4: needs 'choices'"):
        mc_question({"query": "q", "gold": 0}, 3, "t", MCFormat())
    with pytest.raises(ElmtuneError, match="gold 2 is not an index"):
        mc_question({"query": "q", "choices": ["a", "b"], "gold": 2}, 0, "t", MCFormat())
    with pytest.raises(ElmtuneError, match="missing field"):
        mc_question({"choices": ["a"], "gold": 0}, 0, "t", MCFormat(template="{{question}}"))
