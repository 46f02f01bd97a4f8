"""The one training loop. The loss is a parameter (an :class:`~elmtune.finetune.objectives.Objective`).

Per optimizer step: take the next global batch from the resumable length-grouped sampler (each process its slice),
cut it into ``grad_accum`` micro-batches, count the step's loss items over all micro-batches and processes, then
run forward/backward on each micro-batch with the summed loss divided by that count. The gradient is therefore the
large-batch gradient whatever the accumulation or process count. Then clip, step AdamW (fp32 states) and the LR
schedule, log, evaluate and checkpoint as configured.

Resuming restores the adapter tensors, optimizer, scheduler, data position and every process's RNG states from a
checkpoint, so on CPU in fp32 a killed run that resumes ends with the same weights, bit for bit, as a run that was
never interrupted. When the run was extended (a larger ``max_steps`` or ``epochs``), the schedule is that of the new
total: the warm-up is unchanged, the decay stretches to the new end, and the learning rate continues from the new
schedule's value at the current step.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from torch import nn

from elmtune.datasets.prepare import PreparedData
from elmtune.datasets.sampler import LengthGroupedBatchSampler
from elmtune.errors import ElmtuneError
from elmtune.finetune.checkpoint import (
    TrainerState,
    load_checkpoint,
    read_rng_states,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from elmtune.finetune.config import TrainConfig
from elmtune.finetune.device import PrecisionPlan
from elmtune.finetune.objectives import Objective
from elmtune.finetune.run_log import MetricsWriter, ProgressReporter, plot_loss_curve
from elmtune.finetune.schedule import Schedule, warmup_steps_from
from elmtune.models.finite import NonFiniteError, require_finite_parameters
from elmtune.output_paths import removed_on_failure

TRAINABLE_FILE = "trainable.safetensors"


@dataclass
class TrainResult:
    """Where a finished run put its outputs."""

    run_dir: Path
    final_adapter: Path
    steps: int
    last_loss: float | None
    eval_loss: float | None
    metrics_path: Path
    loss_curve: Path | None
    already_finished: bool = False


def last_losses(log_history: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The last training loss and the last validation loss in a run's metrics rows."""
    losses = [row["loss"] for row in log_history if "loss" in row]
    evals = [row["eval_loss"] for row in log_history if "eval_loss" in row]
    return (losses[-1] if losses else None), (evals[-1] if evals else None)


def _sampler(cfg: TrainConfig, lengths: Any, world: int, rank: int) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(
        lengths,
        cfg.batch_size * cfg.grad_accum,
        seed=cfg.seed,
        group_by_length=cfg.group_by_length,
        num_replicas=world,
        rank=rank,
    )


def planned_total_steps(cfg: TrainConfig, train_lengths: Any, num_processes: int) -> int:
    """Optimizer steps of a run: ``max_steps``, or ``epochs`` passes over the global batches of the training data."""
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * len(_sampler(cfg, train_lengths, num_processes, 0))))


def _continue_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer) -> None:
    """Set each group's LR to the (possibly extended) schedule's value at the restored step.

    The optimizer state holds the LR the old schedule gave; for an unchanged schedule this recomputes the same value
    the same way (``base_lr * lambda(step)``, as ``LambdaLR`` does), so an exact resume stays bit-identical.
    """
    for group, base_lr, lr_lambda in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base_lr * lr_lambda(scheduler.last_epoch)


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of ``model`` by parameter name (CPU copies)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_tensors(model: nn.Module, path: Path) -> None:
    """Copy tensors saved by :func:`trainable_tensors` back into ``model``'s trainable parameters.

    Raises:
        ElmtuneError: The checkpoint's tensors do not match the model's trainable parameters.
    """
    saved = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        missing = sorted(set(params) - set(saved)) or sorted(set(saved) - set(params))
        raise ElmtuneError(
            f"checkpoint {path.parent} does not match this model's adapter (first difference: "
            f"{missing[0]}); resume with the same model and adapter settings"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps" and hasattr(torch, "mps"):
        return torch.mps.driver_allocated_memory() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak RSS: bytes on macOS, KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate_loss(
    model: nn.Module,
    objective: Objective,
    items: Any,
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    accelerator: Accelerator,
) -> float:
    """Mean loss per item (e.g. per target token) over ``items``, sharded over processes, in a fixed order."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    mine = list(range(accelerator.process_index, len(items), accelerator.num_processes))
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = _to_device(collate([items[i] for i in mine[start : start + batch_size]]), accelerator.device)
            with accelerator.autocast():
                total += objective(model, batch).loss_sum.double()
            count += objective.count(batch)
    model.train()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return float(total / count) if count > 0 else float("nan")


def _step_is_finite(loss_sum: torch.Tensor, grad_norm: torch.Tensor | float, accelerator: Accelerator) -> bool:
    """Whether every process's loss and the global gradient norm are finite.

    Under fp16 with a gradient scaler an infinite norm is the scaler's overflow signal (it skips that update and
    lowers the scale itself), so there only the loss counts.
    """
    bad = torch.tensor(0.0 if bool(torch.isfinite(loss_sum)) else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    grad_ok = math.isfinite(float(grad_norm)) or accelerator.scaler is not None
    return grad_ok and float(bad) == 0.0


def _skip_nonfinite_step(
    state: TrainerState, cfg: TrainConfig, loss: float, grad_norm: float, progress: ProgressReporter
) -> None:
    """Count a step whose loss or gradient is not finite and drop its gradient, or stop the run (one line)."""
    state.skipped_nonfinite += 1
    step = state.step + 1
    what = f"step {step}: the loss is {loss:.4g} and the gradient norm {grad_norm:.4g}"
    if state.skipped_nonfinite > cfg.skip_nonfinite:
        allowed = f" ({cfg.skip_nonfinite} such steps allowed)" if cfg.skip_nonfinite else ""
        raise NonFiniteError(
            f"{what}: training diverged{allowed} and stopped; nothing from this step was saved. Lower the learning "
            "rate (--lr) or raise skip_nonfinite"
        )
    progress.message(f"{what}: step skipped ({state.skipped_nonfinite} of {cfg.skip_nonfinite} allowed)")


def _write_final(model: nn.Module, save_adapter: Callable[[nn.Module, Path], None], run_dir: Path) -> Path:
    require_finite_parameters(model, "the final adapter", trainable_only=True)
    final = run_dir / "final"
    tmp = run_dir / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with removed_on_failure(tmp, final):
        save_adapter(model, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def train(
    model: nn.Module,
    objective: Objective,
    data: PreparedData,
    cfg: TrainConfig,
    *,
    run_dir: Path,
    run_config: dict[str, Any],
    plan: PrecisionPlan,
    save_adapter: Callable[[nn.Module, Path], None],
    resume: Path | None = None,
    accelerator: Accelerator | None = None,
    data_sha256: str | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` (an adapter on a frozen base) on ``data`` with ``objective``.

    Args:
        model: The model; only parameters with ``requires_grad`` are optimised (they should be fp32).
        objective: The loss (see :mod:`elmtune.finetune.objectives`).
        data: Prepared training (and optional validation) data.
        cfg: Optimisation and bookkeeping settings.
        run_dir: The run directory (created if needed).
        run_config: The full run configuration, stored in every checkpoint.
        plan: Device and precision plan.
        save_adapter: Writes the adapter of a model (PEFT format) into a directory.
        resume: A checkpoint directory to continue from.
        accelerator: An existing ``Accelerator`` (one is created from ``plan`` otherwise).
        data_sha256: Fingerprint of the training data, stored in every checkpoint of a fresh run (see
            :mod:`elmtune.finetune.resume_check`).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ElmtuneError: Nothing to train, or a checkpoint that does not match.
    """
    accelerator = accelerator or Accelerator(
        cpu=plan.device.type == "cpu", mixed_precision=plan.accelerate_mixed_precision
    )
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ElmtuneError("the model has no trainable parameters; apply an adapter first")
    sampler = _sampler(cfg, data.train_lengths, world, rank)
    total_steps = planned_total_steps(cfg, data.train_lengths, world)
    schedule = Schedule(
        peak_lr=cfg.lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps_from(cfg.warmup, total_steps),
        kind=cfg.schedule,
        min_lr=cfg.min_lr,
        warmup_init_lr=cfg.warmup_init_lr,
    )
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    scheduler = schedule.scheduler(optimizer)
    state = TrainerState(data_sha256=data_sha256)
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume, restore_rng=False)
        load_trainable_tensors(model, resume / TRAINABLE_FILE)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
        _continue_schedule(scheduler, optimizer)
        state = checkpoint.state
        state.data_sha256 = state.data_sha256 or data_sha256
        sampler.set_position(state.epoch, state.batch_in_epoch)
    state.total_steps, state.num_processes = total_steps, world
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if checkpoint is not None:
        restore_rng_states(*read_rng_states(checkpoint.path, rank))
    else:
        torch.manual_seed(cfg.seed + rank)

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    writer = MetricsWriter(metrics_path, truncate_after_step=state.step) if main else None
    progress = ProgressReporter(total_steps, start_step=state.step, enabled=main, print_every=max(1, cfg.log_every))
    progress.message(plan.note)
    progress.message(
        f"{world} process(es); global batch {cfg.batch_size * cfg.grad_accum * world} examples "
        f"({cfg.batch_size} x {cfg.grad_accum} accumulation x {world}); {total_steps} steps"
    )
    progress.message(data.summary())

    def write_model(directory: Path) -> None:
        require_finite_parameters(unwrapped, f"the adapter at step {state.step}", trainable_only=True)
        save_adapter(unwrapped, directory / "adapter")
        save_file(trainable_tensors(unwrapped), str(directory / TRAINABLE_FILE))

    def checkpoint_now() -> None:
        state.epoch, state.batch_in_epoch = sampler.epoch, sampler.batch_index
        rng = gather_object([rng_states()]) if world > 1 else [rng_states()]  # every process's, by rank
        if main:
            path = save_checkpoint(
                run_dir / "checkpoints",
                state,
                write_model=write_model,
                optimizer=optimizer,
                scheduler=scheduler,
                config=run_config,
                keep_last=cfg.keep_last,
                rng=rng,
            )
            progress.message(f"checkpoint {path}")
        accelerator.wait_for_everyone()

    batches = iter(sampler)
    last_loss, eval_loss = last_losses(state.log_history)  # what a resumed run that has no steps left reports
    window_tokens, window_start = 0, time.perf_counter()
    model.train()
    while state.step < total_steps:
        try:
            indices = next(batches)
        except StopIteration:
            batches = iter(sampler)
            continue
        step_start = time.perf_counter()
        items = [data.train[i] for i in indices]
        micro = [
            _to_device(data.collate(items[i : i + cfg.batch_size]), accelerator.device)
            for i in range(0, len(items), cfg.batch_size)
        ]
        local = torch.tensor(
            [sum(objective.count(b) for b in micro), sum(objective.tokens(b) for b in micro)],
            dtype=torch.float64,
            device=accelerator.device,
        )
        step_count, step_tokens = accelerator.reduce(local, "sum").tolist()
        scale = world / max(step_count, 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                with accelerator.autocast():
                    out = objective(model, batch)
                accelerator.backward(out.loss_sum * scale)
            loss_sum += out.loss_sum.detach().double()
            for key, value in out.metrics.items():
                metric_sums[key] = metric_sums.get(key, 0) + value.double()
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = accelerator.clip_grad_norm_(params, max_norm)
        lr = optimizer.param_groups[0]["lr"]
        if _step_is_finite(loss_sum, grad_norm, accelerator):
            optimizer.step()
        else:
            _skip_nonfinite_step(state, cfg, float(loss_sum), float(grad_norm), progress)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += int(step_tokens)
        state.elapsed_s += time.perf_counter() - step_start
        window_tokens += int(step_tokens)

        if state.step % cfg.log_every == 0 or state.step == total_steps:
            totals = accelerator.reduce(torch.stack([loss_sum, *metric_sums.values()]), "sum") / max(step_count, 1)
            last_loss = float(totals[0])
            now = time.perf_counter()
            row = {
                "step": state.step,
                "epoch": round(sampler.epoch + sampler.batch_index / len(sampler), 4),
                "loss": last_loss,
                **{key: float(v) for key, v in zip(metric_sums, totals[1:].tolist(), strict=True)},
                "lr": lr,
                "grad_norm": float(grad_norm),
                **({"skipped_nonfinite": state.skipped_nonfinite} if cfg.skip_nonfinite else {}),
                "tokens": int(step_tokens),
                "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                "elapsed_s": round(state.elapsed_s, 3),
                "peak_memory_mb": round(_peak_memory_mb(accelerator.device), 1),
            }
            window_tokens, window_start = 0, now
            state.log_history.append(row)
            if writer:
                writer.write(row)
            progress.update(state.step, row)
        at_end = state.step == total_steps
        if data.validation is not None and ((cfg.eval_every and state.step % cfg.eval_every == 0) or at_end):
            eval_loss = evaluate_loss(model, objective, data.validation, data.collate, cfg.batch_size, accelerator)
            row = {"step": state.step, "eval_loss": eval_loss}
            state.log_history.append(row)
            if writer:
                writer.write(row)
            progress.message(f"step {state.step}: validation loss {eval_loss:.4f}")
        if (cfg.save_every and state.step % cfg.save_every == 0) or at_end:
            checkpoint_now()

    progress.close()
    final = run_dir / "final"
    curve = None
    if main:
        final = _write_final(unwrapped, save_adapter, run_dir)
        writer.close()
        curve = plot_loss_curve(metrics_path, run_dir / "loss_curve.png", title=str(run_config.get("model", "")))
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, final, state.step, last_loss, eval_loss, metrics_path, curve)
