"""``elmtune train``: fine-tune an adapter. Flags override the recipe YAML, which overrides the defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from elmtune.cli.options import ConfigOpt, DeviceOpt, OverwriteOpt, config_keys, flag_names, name_flag
from elmtune.errors import ConfigError

if TYPE_CHECKING:
    from elmtune.finetune.config import RunConfig

Opt = typer.Option

RENAMED: dict[str, str] = {
    "model": "model",  # the recipe's top-level key
    "data": "data.path",
    "data_format": "data.format",  # --format
    "rank": "adapter.r",
    "seed": "train.seed",  # data.seed (the hold-out split's seed) is set in the recipe only
    "adapter": "start_from",
}
"""Parameters whose config key is not the one field of the same name in the run config."""

COMMAND_OPTIONS: frozenset[str] = frozenset({"ctx", "config", "resume", "resume_from", "overwrite", "num_processes"})
"""Parameters of the command itself, not of the run config."""


def _number(text: str | None) -> int | float | None:
    """``"100"`` -> 100, ``"0.1"`` -> 0.1 (warm-up and validation size take steps/counts or fractions)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None


def _relaunch(num_processes: int) -> None:
    """Run this same command in ``num_processes`` data-parallel processes (torchrun; gloo on CPU, NCCL on GPUs)."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        if arg.startswith("--num-processes="):
            continue
        argv.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_processes}",
        "-m",
        "elmtune.cli",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    raise typer.Exit(subprocess.call(command, env=env))


def train(
    ctx: typer.Context,
    model: Annotated[str | None, Opt("--model", "-m", help="Preset, hub id or model directory.")] = None,
    data: Annotated[str | None, Opt("--data", "-d", help="Data file, directory or hub dataset id.")] = None,
    config: ConfigOpt = None,
    output_dir: Annotated[str | None, Opt("--output-dir", "-o", help="Run directory.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the latest checkpoint in the run dir.")] = False,
    resume_from: Annotated[Path | None, Opt("--resume-from", help="Continue from this checkpoint.")] = None,
    overwrite: OverwriteOpt = False,
    num_processes: Annotated[int, Opt("--num-processes", help="Data-parallel processes (torchrun).")] = 1,
    data_format: Annotated[
        str | None,
        Opt(
            "--format",
            help="auto; sft: alpaca, commonsense, messages, prompt_completion, text; dpo: preference, "
            "sharegpt_preference, alpaca_preference (LLaMA-Factory) or ultrafeedback_raw (binarised while loading).",
        ),
    ] = None,
    split: Annotated[str | None, Opt(help="Split of a dataset directory or hub dataset.")] = None,
    subset: Annotated[str | None, Opt(help="Hub dataset configuration name.")] = None,
    revision: Annotated[str | None, Opt(help="Hub dataset revision.")] = None,
    template: Annotated[str | None, Opt(help="auto, alpaca, chat or plain.")] = None,
    system_prompt: Annotated[str | None, Opt(help="chat: system turn for conversations without one.")] = None,
    max_length: Annotated[int | None, Opt(help="Longest sequence in tokens.")] = None,
    max_prompt_length: Annotated[
        int | None, Opt(help="dpo: longest prompt once a pair must be shortened (Apple: 512 of 1024).")
    ] = None,
    overlong: Annotated[str | None, Opt(help="Examples over --max-length: truncate, drop or error.")] = None,
    truncation_side: Annotated[str | None, Opt(help="right keeps the start, left keeps BOS and the end.")] = None,
    train_on_prompt: Annotated[bool | None, Opt(help="Train on prompt tokens too.")] = None,
    packing: Annotated[bool | None, Opt(help="Pack examples (block-diagonal attention).")] = None,
    pack_strategy: Annotated[str | None, Opt(help="best_fit or sequential.")] = None,
    padding_free: Annotated[
        bool | None, Opt(help="Each micro-batch in one row, no padding (attention per example): same loss, less work.")
    ] = None,
    pad_to_multiple_of: Annotated[int | None, Opt(help="Round padded lengths up to a multiple of this.")] = None,
    skip_invalid: Annotated[bool | None, Opt(help="Skip and count bad rows.")] = None,
    validation_size: Annotated[str | None, Opt(help="Held-out examples: a count or a fraction.")] = None,
    limit: Annotated[int | None, Opt(help="Use only the first N rows.")] = None,
    method: Annotated[str | None, Opt(help="lora or dora.")] = None,
    rank: Annotated[int | None, Opt("--rank", "-r", help="LoRA rank.")] = None,
    alpha: Annotated[float | None, Opt(help="LoRA alpha.")] = None,
    dropout: Annotated[float | None, Opt(help="Adapter dropout.")] = None,
    targets: Annotated[str | None, Opt(help="attn, mlp, all, apple, q,v, module names, re:<regex>.")] = None,
    layers: Annotated[str | None, Opt(help="Layer subset, e.g. 8-15 or 0,2,4.")] = None,
    rank_strategy: Annotated[str | None, Opt(help="uniform, proportional or budget.")] = None,
    use_rslora: Annotated[bool | None, Opt(help="Rank-stabilised scaling alpha / sqrt(r).")] = None,
    init: Annotated[str | None, Opt(help="default, gaussian, pissa, pissa_niter_N, olora or orthogonal.")] = None,
    train_norms: Annotated[bool | None, Opt(help="Also train the RMSNorm weights.")] = None,
    max_steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    epochs: Annotated[float | None, Opt(help="Epochs (when --max-steps is not given).")] = None,
    batch_size: Annotated[int | None, Opt(help="Micro-batch size per process.")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps.")] = None,
    group_by_length: Annotated[bool | None, Opt(help="Batch examples of similar length together.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    min_lr: Annotated[float | None, Opt(help="Final learning rate.")] = None,
    schedule: Annotated[str | None, Opt(help="cosine, linear or constant.")] = None,
    warmup: Annotated[str | None, Opt(help="Warm-up steps (int) or fraction (float).")] = None,
    warmup_init_lr: Annotated[float | None, Opt(help="Learning rate at step 0 of the warm-up.")] = None,
    weight_decay: Annotated[float | None, Opt(help="AdamW weight decay.")] = None,
    eps: Annotated[float | None, Opt(help="AdamW epsilon.")] = None,
    max_grad_norm: Annotated[float | None, Opt(help="Clip the gradient norm to this (0: no clipping).")] = None,
    z_loss: Annotated[float | None, Opt(help="z-loss coefficient (Apple: 1e-4).")] = None,
    skip_nonfinite: Annotated[
        int | None, Opt(help="Steps with a NaN/inf loss or gradient to skip before stopping (default 0: stop).")
    ] = None,
    objective: Annotated[str | None, Opt(help="sft, or dpo for preference pairs.")] = None,
    preference_loss: Annotated[str | None, Opt(help="dpo: sigmoid (DPO), hinge or ipo.")] = None,
    beta: Annotated[float | None, Opt(help="dpo: beta (Apple's Instruct recipe: 0.01).")] = None,
    label_smoothing: Annotated[
        float | None, Opt(help="dpo, sigmoid loss: probability that a pair's labels are flipped (cDPO), in [0, 0.5).")
    ] = None,
    precompute_reference: Annotated[
        bool | None,
        Opt(help="dpo: compute the reference log-probs once before training (cached in the run directory)."),
    ] = None,
    share_prompt: Annotated[
        bool | None,
        Opt(help="dpo: compute each pair's shared prompt once (default); --no-share-prompt: two rows per pair."),
    ] = None,
    adapter: Annotated[
        str | None,
        Opt(help="Continue from this saved adapter (SFT -> DPO: the reference is the base plus this adapter)."),
    ] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    log_every: Annotated[int | None, Opt(help="Log every N steps.")] = None,
    report_to: Annotated[
        list[str] | None,
        Opt(help="Also send metrics and settings to tensorboard, wandb and/or mlflow (repeat or comma list)."),
    ] = None,
    eval_every: Annotated[int | None, Opt(help="Validate every N steps.")] = None,
    save_every: Annotated[int | None, Opt(help="Checkpoint every N steps.")] = None,
    keep_last: Annotated[int | None, Opt(help="Checkpoints to keep.")] = None,
    device: DeviceOpt = None,
    precision: Annotated[str | None, Opt(help="auto, fp32, bf16 or fp16.")] = None,
    base_dtype: Annotated[str | None, Opt(help="Base weights: auto, fp32, bf16, fp16, nf4 or int8 (QLoRA).")] = None,
    gradient_checkpointing: Annotated[bool | None, Opt(help="Recompute activations to save memory.")] = None,
) -> None:
    """Fine-tune a LoRA/DoRA adapter (SFT or preference optimisation) and write a self-describing run directory.

    Settings come from the defaults, then the recipe (--config), then the flags: every recipe key has a flag.
    """
    values = dict(locals())
    if num_processes > 1 and "RANK" not in os.environ:
        _relaunch(num_processes)
    if resume and resume_from is not None:
        raise typer.BadParameter("give --resume or --resume-from, not both")
    if overwrite and (resume or resume_from is not None):
        raise typer.BadParameter("--overwrite starts a fresh run; it cannot be combined with --resume/--resume-from")
    run_config = _run_config(ctx, config, values)
    if config is not None and output_dir is None:
        from elmtune.finetune.output_dir import check_recipe_output_dir

        check_recipe_output_dir(config, run_config.train.output_dir, confirmed=overwrite)
    from elmtune.finetune.run import run_training

    typer.echo(f"run directory: {Path(run_config.train.output_dir).resolve()}; data: {run_config.data.path}")
    result = run_training(
        run_config,
        resume=resume_from if resume_from is not None else (True if resume else None),
        overwrite=overwrite,
    )
    if result.already_finished:
        typer.echo(
            f"{result.run_dir} already finished all {result.steps} steps; nothing was changed (final adapter: "
            f"{result.final_adapter}); to train further, resume with a larger --max-steps or --epochs"
        )
        return
    loss = "n/a" if result.last_loss is None else f"{result.last_loss:.4f}"
    typer.echo(f"final adapter: {result.final_adapter}  (steps {result.steps}, last loss {loss})")


def _run_config(ctx: typer.Context, recipe: Path | None, values: dict[str, Any]) -> RunConfig:
    """The run config: defaults, then the recipe, then every parameter that was given; errors name the flag."""
    from elmtune.finetune.config import RunConfig, load_run_config

    values = {**values, "warmup": _number(values["warmup"]), "validation_size": _number(values["validation_size"])}
    keys = config_keys(RunConfig, values, RENAMED, COMMAND_OPTIONS)
    overrides = {key: values[name] for name, key in keys.items() if values[name] is not None}
    try:
        return load_run_config(recipe, overrides)
    except ConfigError as err:
        flags = flag_names(ctx)
        raise name_flag(err, {key: flags[name] for name, key in keys.items()}) from None
