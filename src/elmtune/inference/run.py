"""``run_generate``: what ``elmtune generate`` does, for one prompt (streamed) or a JSONL file of prompts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elmtune.inference.generator import Reply, generate_replies, generate_reply
from elmtune.inference.loading import load_for_generation
from elmtune.inference.prompt_file import read_prompt_rows, reply_lines
from elmtune.inference.prompts import Prompt
from elmtune.inference.request import GenerationRequest
from elmtune.output_paths import StagedFile, check_output_file


@dataclass(frozen=True)
class GenerationResult:
    """What a run produced.

    Attributes:
        replies: One reply per prompt, in input order.
        output: The JSONL file written (batch mode), else None.
        seconds: Time spent generating (loading excluded).
    """

    replies: tuple[Reply, ...]
    output: Path | None
    seconds: float


def run_generate(
    request: GenerationRequest,
    on_text: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Generate the reply to one prompt, or to every prompt of a JSONL file.

    In batch mode the output file and every input row are checked before the model is loaded, and the output is
    written under a hidden temporary name and renamed only when complete.

    Args:
        request: The model, the prompt(s) and the decoding settings.
        on_text: Single prompt: called with each piece of the reply as it is generated.
        on_progress: Batch mode: called with ``(replies done, total)`` after each batch.

    Returns:
        The replies, and the output file in batch mode.

    Raises:
        OutputExistsError: The output file exists and ``overwrite`` is false.
        DataRowError: An input row is not a prompt (the message names the file and line).
        ModelNotFoundError: The model cannot be found.
    """
    if request.input is None or request.output is None:
        model, tokenizer = load_for_generation(request.source)
        prompt = Prompt.from_text(str(request.prompt), system=request.system, raw=request.raw)
        start = time.perf_counter()
        reply = generate_reply(model, tokenizer, prompt, request.decoding, on_text)
        return GenerationResult((reply,), None, time.perf_counter() - start)
    check_output_file(request.output, overwrite=request.overwrite)
    rows = read_prompt_rows(request.input, system=request.system, raw=request.raw)
    model, tokenizer = load_for_generation(request.source)
    start = time.perf_counter()
    replies = generate_replies(
        model,
        tokenizer,
        [row.prompt for row in rows],
        request.decoding,
        batch_size=request.batch_size,
        on_batch=None if on_progress is None else lambda done: on_progress(done, len(rows)),
    )
    seconds = time.perf_counter() - start
    staged = StagedFile(request.output, overwrite=request.overwrite)
    with staged as path:
        path.write_text(reply_lines(rows, [reply.text for reply in replies]), encoding="utf-8")
        staged.commit()
    return GenerationResult(tuple(replies), request.output, seconds)


__all__ = ["GenerationResult", "run_generate"]
