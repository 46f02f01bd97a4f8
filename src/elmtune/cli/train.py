"""``elmtune train``: fine-tune an adapter. Flags override the recipe YAML, which overrides the defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option

# flag name -> dotted config key
_FLAG_KEYS = {
    "model": "model",
    "data": "data.path",
    "data_format": "data.format",
    "template": "data.template",
    "max_length": "data.max_length",
    "max_prompt_length": "data.max_prompt_length",
    "train_on_prompt": "data.train_on_prompt",
    "packing": "data.packing",
    "skip_invalid": "data.skip_invalid",
    "validation_size": "data.validation_size",
    "limit": "data.limit",
    "method": "adapter.method",
    "rank": "adapter.r",
    "alpha": "adapter.alpha",
    "dropout": "adapter.dropout",
    "targets": "adapter.targets",
    "layers": "adapter.layers",
    "rank_strategy": "adapter.rank_strategy",
    "output_dir": "train.output_dir",
    "max_steps": "train.max_steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "lr": "train.lr",
    "min_lr": "train.min_lr",
    "schedule": "train.schedule",
    "warmup": "train.warmup",
    "z_loss": "train.z_loss",
    "skip_nonfinite": "train.skip_nonfinite",
    "objective": "train.objective",
    "preference_loss": "train.preference_loss",
    "beta": "train.beta",
    "seed": "train.seed",
    "log_every": "train.log_every",
    "eval_every": "train.eval_every",
    "save_every": "train.save_every",
    "keep_last": "train.keep_last",
    "device": "train.device",
    "precision": "train.precision",
    "base_dtype": "train.base_dtype",
    "gradient_checkpointing": "train.gradient_checkpointing",
}


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
    model: Annotated[str | None, Opt("--model", "-m", help="Preset, hub id or model directory.")] = None,
    data: Annotated[str | None, Opt("--data", "-d", help="Data file, directory or hub dataset id.")] = None,
    config: Annotated[Path | None, Opt("--config", "-c", help="Recipe YAML (model/adapter/data/train).")] = None,
    output_dir: Annotated[str | None, Opt("--output-dir", "-o", help="Run directory.")] = None,
    resume: Annotated[bool, Opt("--resume", help="Continue from the latest checkpoint in the run dir.")] = False,
    resume_from: Annotated[Path | None, Opt("--resume-from", help="Continue from this checkpoint.")] = None,
    overwrite: Annotated[
        bool, Opt("--overwrite", help="Replace a previous elmtune run in --output-dir (a fresh run only).")
    ] = False,
    num_processes: Annotated[int, Opt("--num-processes", help="Data-parallel processes (torchrun).")] = 1,
    data_format: Annotated[str | None, Opt("--format", help="auto, alpaca, commonsense, messages, ...")] = None,
    template: Annotated[str | None, Opt(help="auto, alpaca, chat or plain.")] = None,
    max_length: Annotated[int | None, Opt(help="Longest sequence in tokens.")] = None,
    max_prompt_length: Annotated[
        int | None, Opt(help="dpo: longest prompt once a pair must be shortened (Apple: 512 of 1024).")
    ] = None,
    train_on_prompt: Annotated[bool | None, Opt(help="Train on prompt tokens too.")] = None,
    packing: Annotated[bool | None, Opt(help="Pack examples (block-diagonal attention).")] = None,
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
    max_steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    epochs: Annotated[float | None, Opt(help="Epochs (when --max-steps is not given).")] = None,
    batch_size: Annotated[int | None, Opt(help="Micro-batch size per process.")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    min_lr: Annotated[float | None, Opt(help="Final learning rate.")] = None,
    schedule: Annotated[str | None, Opt(help="cosine, linear or constant.")] = None,
    warmup: Annotated[str | None, Opt(help="Warm-up steps (int) or fraction (float).")] = None,
    z_loss: Annotated[float | None, Opt(help="z-loss coefficient (Apple: 1e-4).")] = None,
    skip_nonfinite: Annotated[
        int | None, Opt(help="Steps with a NaN/inf loss or gradient to skip before stopping (default 0: stop).")
    ] = None,
    objective: Annotated[str | None, Opt(help="sft, or dpo for preference pairs.")] = None,
    preference_loss: Annotated[str | None, Opt(help="dpo: sigmoid (DPO), hinge or ipo.")] = None,
    beta: Annotated[float | None, Opt(help="dpo: beta (Apple's Instruct recipe: 0.01).")] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    log_every: Annotated[int | None, Opt(help="Log every N steps.")] = None,
    eval_every: Annotated[int | None, Opt(help="Validate every N steps.")] = None,
    save_every: Annotated[int | None, Opt(help="Checkpoint every N steps.")] = None,
    keep_last: Annotated[int | None, Opt(help="Checkpoints to keep.")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:1, mps.")] = None,
    precision: Annotated[str | None, Opt(help="auto, fp32, bf16 or fp16.")] = None,
    base_dtype: Annotated[str | None, Opt(help="Base weights: auto, fp32, bf16 or fp16.")] = None,
    gradient_checkpointing: Annotated[bool | None, Opt(help="Recompute activations to save memory.")] = None,
) -> None:
    """Fine-tune a LoRA/DoRA adapter (SFT or preference optimisation) and write a self-describing run directory."""
    if num_processes > 1 and "RANK" not in os.environ:
        _relaunch(num_processes)
    if resume and resume_from is not None:
        raise typer.BadParameter("give --resume or --resume-from, not both")
    if overwrite and (resume or resume_from is not None):
        raise typer.BadParameter("--overwrite starts a fresh run; it cannot be combined with --resume/--resume-from")
    from elmtune.finetune.config import load_run_config
    from elmtune.finetune.run import run_training

    values = dict(locals())
    values["warmup"], values["validation_size"] = _number(warmup), _number(validation_size)
    overrides = {key: values[flag] for flag, key in _FLAG_KEYS.items() if values[flag] is not None}
    run_config = load_run_config(config, overrides)
    if config is not None and output_dir is None:
        from elmtune.finetune.output_dir import check_recipe_output_dir

        check_recipe_output_dir(config, run_config.train.output_dir, confirmed=overwrite)
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
