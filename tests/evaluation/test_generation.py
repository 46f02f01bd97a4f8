"""LLM-Adapters' generation protocol: its prompt byte for byte, batched left-padded greedy and beam decoding equal to
naive one-by-one loops, and answer extraction."""

import re

import pytest
import torch

from elmtune.datasets.templates import llm_adapters_eval_prompt
from elmtune.evaluation.config import GenerationSettings
from elmtune.evaluation.data import load_rows
from elmtune.evaluation.generation import answer_pattern, extract_answer, generate_answers, response_text


@torch.inference_mode()
def _greedy(model, tokenizer, prompt, steps):
    """Naive greedy decoding: full forward pass per step, no cache, no padding; stops at EOS."""
    ids = tokenizer.encode(prompt)
    for _ in range(steps):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids, skip_special_tokens=True)


@torch.inference_mode()
def _beam_search(model, tokenizer, prompt, steps, beams):
    """Naive beam search: each kept sequence is extended by its best tokens (full forward pass, no cache, no padding)
    and the ``beams`` sequences with the largest summed log-probability are kept; returns the best after ``steps``.

    A sequence's ``beams`` best extensions are the only ones that can be among the ``beams`` best overall. The reference
    has no end-of-sequence handling, so it asserts that no kept sequence ends in EOS.
    """
    kept = [(tokenizer.encode(prompt), 0.0)]
    for _ in range(steps):
        candidates = []
        for ids, score in kept:
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)  # (V,)
            values, tokens = logprobs.topk(beams)
            candidates += [(ids + [int(t)], score + float(v)) for v, t in zip(values, tokens, strict=True)]
        kept = sorted(candidates, key=lambda candidate: -candidate[1])[:beams]
        assert all(ids[-1] != tokenizer.eos_token_id for ids, _ in kept)
    return tokenizer.decode(kept[0][0], skip_special_tokens=True)


def _rows(fixtures_dir):
    rows = load_rows(fixtures_dir / "llm_adapters" / "piqa" / "test.json", "piqa")[:2]
    rows.append(load_rows(fixtures_dir / "llm_adapters" / "boolq" / "test.json", "boolq")[0])  # shorter: left-padded
    return rows


def test_batched_greedy_generation_equals_a_naive_loop(tiny_model, tokenizer, fixtures_dir):
    rows = _rows(fixtures_dir)
    settings = GenerationSettings(num_beams=1, max_new_tokens=5)
    answers = generate_answers(tiny_model, tokenizer, rows, "piqa", settings=settings, batch_size=3, progress=False)
    for row, answer in zip(rows, answers, strict=True):
        decoded = _greedy(tiny_model, tokenizer, llm_adapters_eval_prompt(row["instruction"]), 5)
        assert answer.output == decoded.split("### Response:")[1].strip()
        assert answer.answer == row["answer"] and answer.index == row["_index"]
        assert answer.parsed == (answer.prediction != "")


def test_batched_beam_search_equals_a_naive_beam_search(tiny_model, tokenizer, fixtures_dir):
    rows = _rows(fixtures_dir)
    settings = GenerationSettings(num_beams=3, max_new_tokens=4)
    answers = generate_answers(tiny_model, tokenizer, rows, "piqa", settings=settings, batch_size=3, progress=False)
    differs_from_greedy = False
    for row, answer in zip(rows, answers, strict=True):
        prompt = llm_adapters_eval_prompt(row["instruction"])
        decoded = _beam_search(tiny_model, tokenizer, prompt, steps=4, beams=3)
        assert answer.output == decoded.split("### Response:")[1].strip()
        hits = re.findall(r"solution1|solution2", answer.output)  # piqa's answer vocabulary
        assert answer.prediction == (hits[0] if hits else "")
        differs_from_greedy |= decoded != _greedy(tiny_model, tokenizer, prompt, 4)
    assert differs_from_greedy  # the beams changed an output, so the comparison is not greedy against greedy


def test_generation_settings_are_validated():
    with pytest.raises(ValueError, match="num_beams"):
        GenerationSettings(num_beams=0)


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


def test_extraction_takes_the_first_hit_of_the_task_vocabulary():
    assert extract_answer("the correct answer is answer3, not answer1", answer_pattern("ARC-Easy", [])) == "answer3"
    assert extract_answer("I think false. Or true.", answer_pattern("boolq", [])) == "false"
    assert extract_answer("no idea", answer_pattern("piqa", [])) == ""
    # Unknown task: the parsed candidates are the vocabulary (longest first, so option10 is not read as option1).
    assert extract_answer("option10!", answer_pattern("mine", [f"option{i}" for i in range(1, 11)])) == "option10"


def test_response_text_is_what_follows_the_first_response_marker():
    decoded = llm_adapters_eval_prompt("Q?") + "the correct answer is true\n### Response: junk"
    assert response_text(decoded) == "the correct answer is true"
