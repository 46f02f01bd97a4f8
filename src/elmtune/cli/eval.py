"""``elmtune eval MODEL``: commonsense tasks (Apple's, LLM-Adapters', lm-eval's or MC protocols) or preference pairs.

The ``preference`` protocol scores held-out pairs with MODEL + adapter and with MODEL, its reference.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from elmtune.cli.options import (
    ConfigOpt,
    DeviceOpt,
    ModelArg,
    OverwriteOpt,
    ProgressOpt,
    config_keys,
    flag_names,
    given_flags,
    merge_settings,
    name_flag,
    nest,
)
from elmtune.errors import ConfigError, ElmtuneError

if TYPE_CHECKING:
    from elmtune.evaluation.config import EvalConfig

COMMAND_OPTIONS: frozenset[str] = frozenset(
    {"ctx", "model", "adapter", "config_file", "output", "overwrite", "compare", "compare_adapter", "tokenizer"}
)
"""Parameters of the command itself; every other parameter sets the EvalConfig field of its name."""


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
    ctx: typer.Context,
    model: ModelArg,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="Adapter directory to apply on top of MODEL.", show_default=False)
    ] = None,
    config_file: ConfigOpt = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol", "-p", help="apple | llm-adapters | lm-eval | mc | preference (see docs/evaluation.md)."
        ),
    ] = "apple",
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Data directory (e.g. LLM-Adapters' dataset/ with <task>/test.json) or files; TASK=FILE names a "
            "file's task. Repeat or separate with commas. lm-eval without --data reads the Hugging Face datasets; "
            "with --backend lm-eval these are directories of task YAMLs; preference: files, dataset directories or hub "
            "ids of pairs.",
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
            "--limit",
            help="Questions per task (apple/llm-adapters: Apple's seeded shuffle first; preference: first pairs).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        str, typer.Option("--batch-size", "-b", help="Rows per forward pass (preference: pairs), or auto.")
    ] = "auto",
    add_bos: Annotated[
        bool, typer.Option("--add-bos/--no-add-bos", help="Prepend BOS to every context (Apple's setting).")
    ] = True,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="fp32 | bf16 | fp16; default: the checkpoint's.", show_default=False)
    ] = None,
    device: DeviceOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output directory, absent or empty (see --overwrite); default runs/eval-<time>.",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
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
    beta: Annotated[
        float, typer.Option("--beta", help="preference: implicit reward beta * (log pi_tuned - log pi_base).")
    ] = 0.1,
    data_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="preference: auto, preference, sharegpt_preference, alpaca_preference or ultrafeedback_raw.",
        ),
    ] = "auto",
    split: Annotated[
        str, typer.Option("--split", help="preference: split of a dataset directory or hub dataset.")
    ] = "train",
    data_template: Annotated[
        str, typer.Option("--data-template", help="preference: the run's template: auto, chat, alpaca or plain.")
    ] = "auto",
    max_length: Annotated[
        int, typer.Option("--max-length", help="preference: longest sequence in tokens, as the DPO run.")
    ] = 2048,
    max_prompt_length: Annotated[
        int, typer.Option("--max-prompt-length", help="preference: longest prompt once a pair is shortened.")
    ] = 512,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid/--no-skip-invalid", help="preference: skip and count malformed rows.")
    ] = False,
    progress: ProgressOpt = True,
) -> None:
    """Evaluate MODEL (optionally + adapter) on commonsense tasks or preference pairs; print a labelled table.

    Settings come from the defaults, then the --config file (EvalConfig's fields), then the flags given. The output
    directory is checked before any model is loaded and written whole: a failure leaves it as it was.
    """
    from elmtune.evaluation import ModelSpec, run_eval

    if compare_adapter is not None and compare is None:
        raise ElmtuneError("--compare-adapter needs --compare")
    if compare == "base" and adapter is None:
        raise ElmtuneError("--compare base compares MODEL + --adapter with MODEL; give --adapter")
    config = _eval_config(ctx, config_file)
    spec = ModelSpec(model, adapter=adapter, tokenizer=tokenizer)
    other = None
    if compare is not None:
        other = ModelSpec(model if compare == "base" else compare, adapter=compare_adapter, tokenizer=tokenizer)
    output_dir = output or Path("runs") / f"eval-{datetime.now():%Y%m%d-%H%M%S}"
    report = run_eval(spec, config, compare=other, output_dir=output_dir, overwrite=overwrite)
    typer.echo(report.markdown())
    typer.echo(f"\nresults: {output_dir / 'results.json'}")


def _eval_config(ctx: typer.Context, config_file: Path | None) -> EvalConfig:
    """The evaluation settings: defaults, then the ``--config`` file, then the flags given; errors name the flag."""
    from elmtune.config_mapping import section_from_mapping
    from elmtune.evaluation.config import EvalConfig
    from elmtune.recipe_yaml import read_config_file

    keys = config_keys(EvalConfig, ctx.params, {}, COMMAND_OPTIONS)
    settings = read_config_file(config_file, "eval config") if config_file is not None else {}
    for name in ("data", "tasks"):
        if isinstance(settings.get(name), str):
            settings[name] = [settings[name]]
        if isinstance(settings.get(name), list):
            settings[name] = _flag_value(name, settings[name])
    given = {keys[name]: _flag_value(name, value) for name, value in given_flags(ctx).items() if name in keys}
    try:
        return section_from_mapping(EvalConfig, merge_settings(settings, nest(given)), "eval")
    except ConfigError as err:
        flags = flag_names(ctx)
        error = name_flag(err, {f"eval.{key}": flags[name] for name, key in keys.items()})
        if config_file is None or err.key in {f"eval.{key}" for key in given}:
            raise error from None
        raise ConfigError(f"{config_file}: {error}", key=err.key) from None


def _flag_value(name: str, value: Any) -> Any:
    """A flag's value as the EvalConfig field takes it (comma-separated lists split, ``auto`` or a batch size)."""
    if name == "data":
        return tuple(_split(value))
    if name == "tasks":
        return tuple(_split(value)) or None
    if name == "batch_size":
        return _batch_size(str(value))
    return value
