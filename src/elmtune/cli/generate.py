"""``elmtune generate MODEL --prompt TEXT``: one reply, streamed to stdout; or a JSONL of prompts to a JSONL of replies.

The decoding options are defined here once and shared with ``elmtune chat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from elmtune.cli.options import DeviceOpt, ModelArg, OverwriteOpt, name_flag
from elmtune.errors import ConfigError

if TYPE_CHECKING:
    from elmtune.inference.settings import DecodingSettings

AdapterOpt = Annotated[
    Path | None, typer.Option("--adapter", help="Adapter directory to apply on top of MODEL.", show_default=False)
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", help="A system turn before the conversation.", show_default=False)
]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="Weight dtype: fp32, bf16 or fp16 (default: the checkpoint's).", show_default=False),
]
MaxNewTokensOpt = Annotated[
    int, typer.Option("--max-new-tokens", help="The most tokens per reply; a reply also ends at EOS.")
]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", help="0: greedy decoding; above 0: sampling at this temperature.")
]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold (1: off; needs --temperature).")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Sample among the K most likely tokens (0: off).")]
RepetitionPenaltyOpt = Annotated[
    float, typer.Option("--repetition-penalty", help="Penalty on tokens already seen (1: off).")
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Seed for a reproducible sampled reply.", show_default=False)
]

DECODING_FLAGS = {
    "generation.max_new_tokens": "--max-new-tokens",
    "generation.temperature": "--temperature",
    "generation.top_p": "--top-p",
    "generation.top_k": "--top-k",
    "generation.repetition_penalty": "--repetition-penalty",
    "generation.seed": "--seed",
}
"""Key of each decoding setting -> its flag, for error messages."""


def decoding_settings(
    max_new_tokens: int, temperature: float, top_p: float, top_k: int, repetition_penalty: float, seed: int | None
) -> DecodingSettings:
    """The decoding settings of the flags; an invalid value is an error naming its flag."""
    from elmtune.inference.settings import DecodingSettings

    try:
        return DecodingSettings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed)
    except ConfigError as err:
        raise name_flag(err, DECODING_FLAGS) from None


def generate(
    model: ModelArg,
    adapter: AdapterOpt = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="The user's message (see --raw).", show_default=False)
    ] = None,
    system: SystemOpt = None,
    raw: Annotated[bool, typer.Option("--raw", help="Feed the prompt as it is, without the chat format.")] = False,
    max_new_tokens: MaxNewTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="JSONL of prompts: 'prompt' or 'messages' per line.", show_default=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="JSONL of replies to create (with --input; see --overwrite).", show_default=False
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts generated together (--input).")] = 8,
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="Tokenizer directory or hub id.", show_default=False)
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Reply to a prompt in OpenELM-Instruct's chat format (greedy by default), streaming the reply to stdout.

    With --input and --output: reply to every prompt of a JSONL file; each output line is its input line + "reply".
    """
    from elmtune.inference.request import GenerationRequest, ModelSource
    from elmtune.inference.run import run_generate

    request = GenerationRequest(
        source=ModelSource(model, adapter, tokenizer, device or "auto", dtype),
        decoding=decoding_settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed),
        prompt=prompt,
        system=system,
        raw=raw,
        input=input_file,
        output=output,
        overwrite=overwrite,
        batch_size=batch_size,
    )
    if request.is_batch:
        result = run_generate(request, on_progress=lambda done, total: typer.echo(f"replied {done}/{total}", err=True))
        typer.echo(f"wrote {len(result.replies)} replies to {result.output} in {result.seconds:.1f} s", err=True)
        return
    run_generate(request, on_text=lambda piece: typer.echo(piece, nl=False))
    typer.echo("")
