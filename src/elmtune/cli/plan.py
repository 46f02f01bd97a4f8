"""``elmtune plan``: predict a training run's peak memory and tokens per step, and whether it fits a device.

The command takes a recipe and the flags of ``elmtune train`` (the same parameters, taken from that command's
signature, so the two can never disagree), builds the run's model on the ``meta`` device and prints the plan.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Annotated, Any

import typer

from elmtune.cli import train as train_cmd
from elmtune.errors import ConfigError, UsageError

NOT_PLANNED: frozenset[str] = frozenset({"resume", "resume_from", "overwrite", "num_processes", "device"})
"""Parameters of ``elmtune train`` that do not change memory (``--device`` takes a budget here)."""
DATA_PLACEHOLDER = "(not read by plan)"
"""``data.path`` when neither the recipe nor a flag names data: the plan reads no data."""

RecipeArg = Annotated[
    str | None,
    typer.Argument(help="A recipe file or shipped recipe name (as --config).", show_default=False),
]
BudgetOpt = Annotated[
    str,
    typer.Option("--device", help="Device and memory: cuda:24GB, mps:16GB, cpu:32GB, or cpu (this machine's memory)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the plan as one JSON object.")]


def _plan(**values: Any) -> None:
    """Predict the peak memory of a training run (weights, adapter, optimizer, activations, logits) and whether it fits.

    Takes the recipe and the flags of `elmtune train`; reads no weights and no data.
    """
    from elmtune.finetune.memory_advice import plan_with_advice
    from elmtune.finetune.memory_counts import count_parameters
    from elmtune.finetune.memory_plan import parse_device

    ctx: typer.Context = values.pop("ctx")
    recipe, config = values.pop("recipe"), values.pop("config")
    as_json, device_spec = values.pop("json_output"), values.pop("device")
    if recipe is not None and config is not None:
        raise UsageError("give the recipe as the argument or as --config, not both")
    budget = parse_device(device_spec)
    run_config = _run_config(ctx, recipe if recipe is not None else config, values)
    plan = plan_with_advice(run_config, budget, count_parameters(run_config))
    if as_json:
        typer.echo(json.dumps({"model": run_config.model, **plan.to_dict()}))
        return
    from rich.console import Console

    from elmtune.finetune.memory_table import plan_table

    console = Console()
    console.print(plan_table(plan, run_config))
    verdict = "fits" if plan.fits else "does NOT fit"
    console.print(f"{plan.total / 1e9:.2f} GB predicted peak {verdict} in {plan.device.describe()}", highlight=False)
    if plan.advice:
        console.print("to fit, change (predicted peak with the change):", highlight=False)
        for line in plan.advice:
            console.print(f"  {line}", highlight=False)


def _run_config(ctx: typer.Context, recipe: Any, values: dict[str, Any]) -> Any:
    """The run config from the recipe and the train flags; a plan needs no data, so a missing data path is filled."""
    try:
        return train_cmd._run_config(ctx, recipe, values)
    except ConfigError as err:
        if err.key != "data.path" or values.get("data") is not None:
            raise
    return train_cmd._run_config(ctx, recipe, {**values, "data": DATA_PLACEHOLDER})


def _signature() -> inspect.Signature:
    """``elmtune train``'s parameters (less :data:`NOT_PLANNED`), the recipe argument, ``--device`` and ``--json``."""
    hints = typing.get_type_hints(train_cmd.train, include_extras=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", keyword, annotation=typer.Context)]
    params.append(inspect.Parameter("recipe", keyword, annotation=RecipeArg, default=None))
    for name, param in inspect.signature(train_cmd.train).parameters.items():
        if name not in NOT_PLANNED and name != "ctx":
            params.append(param.replace(kind=keyword, annotation=hints[name]))
    params.append(inspect.Parameter("device", keyword, annotation=BudgetOpt, default="cpu"))
    params.append(inspect.Parameter("json_output", keyword, annotation=JsonOpt, default=False))
    return inspect.Signature(params)


def _command() -> Any:
    """The ``plan`` command function, with the derived signature Typer reads."""
    signature = _signature()

    def plan(**values: Any) -> None:
        _plan(**values)

    plan.__doc__ = _plan.__doc__
    plan.__signature__ = signature  # type: ignore[attr-defined]
    plan.__annotations__ = {name: param.annotation for name, param in signature.parameters.items()}
    return plan


plan = _command()
"""The ``elmtune plan`` command."""

__all__ = ["NOT_PLANNED", "plan"]
