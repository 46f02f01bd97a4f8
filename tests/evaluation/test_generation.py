"""LLM-Adapters' generation protocol: batched left-padded greedy decoding equals a naive one-by-one loop."""

import pytest
import torch

from elmtune.evaluation.commonsense import load_rows
from elmtune.evaluation.generation import GenerationSettings, generate_answers
from elmtune.evaluation.prompts import llm_adapters_eval_prompt


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


def test_batched_greedy_generation_equals_a_naive_loop(tiny_model, tokenizer, fixtures_dir):
    rows = load_rows(fixtures_dir / "llm_adapters" / "piqa" / "test.json", "piqa")[:2]
    rows.append(load_rows(fixtures_dir / "llm_adapters" / "boolq" / "test.json", "boolq")[0])  # shorter: left-padded
    settings = GenerationSettings(num_beams=1, max_new_tokens=5)
    answers = generate_answers(tiny_model, tokenizer, rows, "piqa", settings=settings, batch_size=3, progress=False)
    for row, answer in zip(rows, answers, strict=True):
        decoded = _greedy(tiny_model, tokenizer, llm_adapters_eval_prompt(row["instruction"]), 5)
        assert answer.output == decoded.split("### Response:")[1].strip()
        assert answer.answer == row["answer"] and answer.index == row["_index"]
        assert answer.parsed == (answer.prediction != "")


def test_beam_search_runs_and_parses(tiny_model, tokenizer, fixtures_dir):
    rows = load_rows(fixtures_dir / "llm_adapters" / "boolq" / "test.json", "boolq")[:1]
    (answer,) = generate_answers(
        tiny_model,
        tokenizer,
        rows,
        "boolq",
        settings=GenerationSettings(num_beams=2, max_new_tokens=3),
        progress=False,
    )
    assert isinstance(answer.output, str) and answer.prediction in ("", "true", "false")


def test_generation_settings_are_validated():
    with pytest.raises(ValueError, match="num_beams"):
        GenerationSettings(num_beams=0)
