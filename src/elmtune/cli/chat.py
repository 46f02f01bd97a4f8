"""``elmtune chat MODEL``: an interactive conversation in OpenELM-Instruct's chat format, replies streamed."""

from __future__ import annotations

import typer

from elmtune.cli.generate import (
    AdapterOpt,
    DtypeOpt,
    MaxNewTokensOpt,
    RepetitionPenaltyOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    decoding_settings,
)
from elmtune.cli.options import DeviceOpt, ModelArg


def _read_line(prompt: str) -> str:
    typer.echo(prompt, nl=False)
    return input()


def chat(
    model: ModelArg,
    adapter: AdapterOpt = None,
    system: SystemOpt = None,
    max_new_tokens: MaxNewTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = 0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Chat with MODEL: the whole conversation is the prompt of every reply; /reset starts over, /exit quits."""
    from elmtune.inference.chat import run_chat
    from elmtune.inference.request import ModelSource

    run_chat(
        ModelSource(model, adapter, None, device or "auto", dtype),
        decoding_settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed),
        read_line=_read_line,
        write=lambda text: typer.echo(text, nl=False),
        system=system,
    )
