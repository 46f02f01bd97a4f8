"""``elmtune eval MODEL``: commonsense evaluation with Apple's, LLM-Adapters', lm-eval's or a local MC protocol."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from elmtune.cli.options import ModelArg
from elmtune.errors import ElmtuneError

EXAMPLES = """
Examples:

  elmtune eval 270M --adapter runs/lora --protocol apple --data LLM-Adapters/dataset --limit 500

  elmtune eval out/merged --protocol lm-eval --tasks arc_easy,piqa --data arc_easy=arc.jsonl,piqa=piqa.jsonl

  elmtune eval 270M --adapter runs/lora --compare base --protocol apple --data LLM-Adapters/dataset
"""


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ElmtuneError(f"--batch-size must be an integer or 'auto', not {value!r}") from None


def eval(  # noqa: A001 - the command is called eval
    model: ModelArg,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="Adapter directory to apply on top of MODEL.", show_default=False)
    ] = None,
    protocol: Annotated[
        str, typer.Option("--protocol", "-p", help="apple | llm-adapters | lm-eval | mc (see docs/evaluation.md).")
    ] = "apple",
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Data directory (e.g. LLM-Adapters' dataset/ with <task>/test.json) or files; TASK=FILE names a "
            "file's task. Repeat or separate with commas. lm-eval without --data reads the Hugging Face datasets; "
            "with --backend lm-eval these are directories of task YAMLs.",
            show_default=False,
        ),
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option("--tasks", "-t", help="Tasks to run (comma-separated); default: all found.", show_default=False),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", help="Questions per task (apple/llm-adapters: Apple's seeded shuffle first).", show_default=False
        ),
    ] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Rows per forward pass, or auto.")] = "auto",
    add_bos: Annotated[
        bool, typer.Option("--add-bos/--no-add-bos", help="Prepend BOS to every context (Apple's setting).")
    ] = True,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="fp32 | bf16 | fp16; default: the checkpoint's.", show_default=False)
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu | cuda | mps; default: the best available.", show_default=False)
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output directory, absent or empty (see --overwrite); default runs/eval-<time>.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing non-empty output directory once results are in.")
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="Also evaluate this model and print both columns and the difference; 'base' = MODEL without "
            "--adapter.",
            show_default=False,
        ),
    ] = None,
    compare_adapter: Annotated[
        Path | None, typer.Option("--compare-adapter", help="Adapter for the --compare model.", show_default=False)
    ] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", help="llm-adapters: 1 = greedy, 4 = LLM-Adapters.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="llm-adapters: tokens to generate.")] = 32,
    template: Annotated[
        str | None,
        typer.Option(
            "--template", help="mc: Jinja prompt template, e.g. 'Question: {{query}}\\nAnswer:'.", show_default=False
        ),
    ] = None,
    target_delimiter: Annotated[
        str, typer.Option("--target-delimiter", help="mc: text between the prompt and each choice.")
    ] = " ",
    backend: Annotated[
        str, typer.Option("--backend", help="elmtune (fast built-in scorer) | lm-eval (lm-eval's evaluator, any task).")
    ] = "elmtune",
    tokenizer: Annotated[
        str | None, typer.Option("--tokenizer", help="Tokenizer directory or hub id.", show_default=False)
    ] = None,
    layout: Annotated[str, typer.Option("--layout", help="auto | shared | full (scorer row layout).")] = "auto",
) -> None:
    """Evaluate MODEL (optionally + adapter) on commonsense tasks; print a labelled table and write results.

    The output directory is checked before any model is loaded and written whole: a failure leaves it as it was.
    """
    from elmtune.evaluation import EvalConfig, GenerationSettings, MCFormat, ModelSpec, run_eval

    if compare_adapter is not None and compare is None:
        raise ElmtuneError("--compare-adapter needs --compare")
    if compare == "base" and adapter is None:
        raise ElmtuneError("--compare base compares MODEL + --adapter with MODEL; give --adapter")
    config = EvalConfig(
        protocol=protocol,  # type: ignore[arg-type]
        data=tuple(_split(data)),
        tasks=tuple(_split(tasks)) or None,
        limit=limit,
        batch_size=_batch_size(batch_size),
        add_bos=add_bos,
        dtype=dtype,
        device=device,
        layout=layout,  # type: ignore[arg-type]
        generation=GenerationSettings(num_beams=num_beams, max_new_tokens=max_new_tokens),
        mc_format=MCFormat(template=template, target_delimiter=target_delimiter),
        backend=backend,  # type: ignore[arg-type]
    )
    spec = ModelSpec(model, adapter=adapter, tokenizer=tokenizer)
    other = None
    if compare is not None:
        other = ModelSpec(model if compare == "base" else compare, adapter=compare_adapter, tokenizer=tokenizer)
    output_dir = output or Path("runs") / f"eval-{datetime.now():%Y%m%d-%H%M%S}"
    report = run_eval(spec, config, compare=other, output_dir=output_dir, overwrite=overwrite)
    typer.echo(report.markdown())
    typer.echo(f"\nresults: {output_dir / 'results.json'}")


eval.__doc__ = f"{eval.__doc__}\n{EXAMPLES}"
