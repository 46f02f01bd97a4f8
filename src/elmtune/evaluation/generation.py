"""LLM-Adapters' generation protocol: its evaluation prompt, greedy (or beam) decoding, first regex hit.

The prompt is LLM-Adapters' evaluation prompt (not the training prompt); at most ``max_new_tokens`` (32) tokens are
generated, greedily by default or with beam search (LLM-Adapters used 4 beams; its temperature/top-p/top-k settings
have no effect without sampling). The decoded text after ``### Response:`` is searched for the task's answer
vocabulary and the first hit is the prediction; text without any hit counts as wrong and as unparseable. The task's
result reports ``acc`` and ``unparsed``, the share of answers without any hit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.datasets.templates import llm_adapters_eval_prompt
from elmtune.evaluation.batching import Batcher
from elmtune.evaluation.config import BatchSize, EvalConfig, GenerationSettings
from elmtune.evaluation.data import DataError, file_provenance, load_rows
from elmtune.evaluation.protocols import apple_subset, parse_candidates
from elmtune.evaluation.report import TaskResult, mean_metric
from elmtune.progress import Progress

ANSWER_PATTERNS: dict[str, str] = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
"""LLM-Adapters' answer vocabulary per task (the regex its generation protocol searches)."""


def answer_pattern(task: str, candidates: list[str]) -> str:
    """The regex of ``task``'s answer vocabulary; other tasks use their parsed candidates."""
    return ANSWER_PATTERNS.get(task) or "|".join(re.escape(c) for c in sorted(candidates, key=len, reverse=True))


def extract_answer(generated: str, pattern: str) -> str:
    """The first hit of ``pattern`` in the generated text (stripped), or ``""`` when there is none."""
    hits = re.findall(pattern, generated.strip())
    return hits[0] if hits else ""


def response_text(decoded: str) -> str:
    """The text after the first ``### Response:`` marker of a decoded prompt + generation, stripped."""
    parts = decoded.split("### Response:")
    return parts[1].strip() if len(parts) > 1 else ""


@dataclass(frozen=True)
class GeneratedAnswer:
    """One question answered by generation.

    Attributes:
        index: Row in the source file.
        output: The decoded response text (after ``### Response:``, stripped).
        prediction: First answer-vocabulary hit in ``output``; ``""`` when unparseable.
        answer: The gold label.
    """

    index: int
    output: str
    prediction: str
    answer: str

    @property
    def correct(self) -> bool:
        """Whether the parsed prediction equals the gold label."""
        return self.prediction == self.answer

    @property
    def parsed(self) -> bool:
        """Whether any answer word was found."""
        return self.prediction != ""


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    task: str,
    *,
    settings: GenerationSettings = GenerationSettings(),  # noqa: B008 - frozen dataclass, safe default
    add_bos: bool | None = True,
    batch_size: BatchSize = "auto",
    progress: bool = True,
) -> list[GeneratedAnswer]:
    """Answer LLM-Adapters rows by generation and extract the answers.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        rows: LLM-Adapters rows (``instruction``, ``answer``, optional ``input``; ``_index`` if tagged).
        task: Task name (chooses the answer vocabulary).
        settings: Beams and token budget.
        add_bos: Prepend BOS to the prompt (None: the tokenizer's default).
        batch_size: Prompts per ``generate`` call, or ``"auto"``.
        progress: Report progress on stderr (see :mod:`elmtune.progress`).

    Returns:
        One :class:`GeneratedAnswer` per row, in order.
    """
    device = next(model.parameters()).device
    prompts = [llm_adapters_eval_prompt(row["instruction"], row.get("input", "") or "") for row in rows]
    kwargs = {} if add_bos is None else {"add_special_tokens": add_bos}
    encoded = [tokenizer(prompt, **kwargs)["input_ids"] for prompt in prompts]
    order = sorted(range(len(rows)), key=lambda i: -len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    texts: dict[int, str] = {}
    bar = Progress(len(rows), f"eval {task} (generate)", "rows", enabled=progress)

    @torch.inference_mode()
    def step(batch: Sequence[int]) -> None:
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, i in enumerate(batch):  # left padding: the generated tokens line up on the right
            ids[b, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[b, width - len(encoded[i]) :] = 1
        output = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )  # (B, width + new)
        for b, i in enumerate(batch):
            texts[i] = tokenizer.decode(output[b], skip_special_tokens=True)
        bar.update(len(batch))

    batcher = Batcher(batch_size, device)
    widths = [(len(encoded[i]) + settings.max_new_tokens) * settings.num_beams for i in order]
    try:
        batcher.run(order, widths, step)
    finally:
        bar.close()

    answers = []
    for i, row in enumerate(rows):
        output = response_text(texts[i])
        pattern = answer_pattern(task, parse_candidates(row["instruction"]))
        answers.append(GeneratedAnswer(row.get("_index", i), output, extract_answer(output, pattern), row["answer"]))
    return answers


def run_llm_adapters(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: str, path: Path, config: EvalConfig
) -> TaskResult:
    """LLM-Adapters' generation protocol on one test file: accuracy and the share of unparseable answers."""
    rows = apple_subset(load_rows(path, task), config.limit, config.seed)
    if not rows:
        raise DataError(f"{path}: no rows")
    start = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer,
        rows,
        task,
        settings=config.generation,
        add_bos=config.add_bos,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    seconds = time.perf_counter() - start
    examples = [
        {
            "task": task,
            "index": a.index,
            "output": a.output,
            "prediction": a.prediction,
            "answer": a.answer,
            "acc": float(a.correct),
            "parsed": a.parsed,
        }
        for a in answers
    ]
    return TaskResult(
        task=task,
        protocol="llm-adapters",
        metrics=[
            mean_metric("acc", [float(a.correct) for a in answers]),
            mean_metric("unparsed", [float(not a.parsed) for a in answers]),
        ],
        seconds=seconds,
        data=file_provenance(path),
        examples=examples,
        bos=config.add_bos,
        details={"num_beams": config.generation.num_beams, "max_new_tokens": config.generation.max_new_tokens},
    )
