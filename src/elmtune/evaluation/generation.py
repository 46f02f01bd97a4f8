"""LLM-Adapters' generation protocol: its evaluation prompt, greedy (or beam) decoding, first regex hit.

The prompt is LLM-Adapters' evaluation prompt (not the training prompt); at most ``max_new_tokens`` (32) tokens are
generated, greedily by default or with beam search (LLM-Adapters used 4 beams; its temperature/top-p/top-k settings
have no effect without sampling). The decoded text after ``### Response:`` is searched for the task's answer
vocabulary and the first hit is the prediction; text without any hit counts as wrong and as unparseable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.evaluation.batching import Batcher, BatchSize
from elmtune.evaluation.prompts import (
    answer_pattern,
    extract_answer,
    llm_adapters_eval_prompt,
    parse_candidates,
    response_text,
)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of the generation protocol.

    Attributes:
        num_beams: 1 for greedy decoding (default), 4 for LLM-Adapters' beam search.
        max_new_tokens: Tokens generated per question (LLM-Adapters: 32).
    """

    num_beams: int = 1
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, not {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")


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
        progress: Show a progress bar.

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
    bar = tqdm(
        total=len(rows), desc=f"{task} (generate)", disable=None if progress else True, leave=False
    )  # None: off when not a TTY

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
