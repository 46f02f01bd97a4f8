"""Setting up a training run: optimizer, LR schedule, data order, and (on resume) everything a checkpoint restores.

Resuming restores the adapter tensors (from the checkpoint's PEFT-format ``adapter/``, the directory users load),
the optimizer, scheduler, data position and every process's RNG states, so on CPU in fp32 a killed run that resumes
ends with the same weights, bit for bit, as a run that was never interrupted. When the run was extended (a larger
``max_steps`` or ``epochs``), the schedule is that of the new total: the warm-up is unchanged, the decay stretches to
the new end, and the learning rate continues from the new schedule's value at the current step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from elmtune.datasets.sampler import LengthGroupedBatchSampler
from elmtune.errors import ElmtuneError
from elmtune.finetune.checkpoint import TrainerState, load_checkpoint, read_rng_states, restore_rng_states
from elmtune.finetune.checkpoint_adapter import restore_adapter
from elmtune.finetune.config import TrainConfig
from elmtune.finetune.schedule import Schedule, warmup_steps_from


@dataclass
class TrainingSession:
    """Everything the steps of one run share.

    Attributes:
        cfg: Optimisation and bookkeeping settings.
        accelerator: The run's one ``Accelerator``.
        model: The model as prepared by ``accelerator`` (possibly wrapped for data parallelism).
        unwrapped: The model itself (what is saved).
        params: The trainable parameters.
        optimizer: AdamW over ``params``.
        scheduler: The LR schedule.
        sampler: The resumable length-grouped sampler of global batches (this process's slice).
        state: The counters saved in every checkpoint.
        total_steps: Optimizer steps of the run.
    """

    cfg: TrainConfig
    accelerator: Accelerator
    model: nn.Module
    unwrapped: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: LengthGroupedBatchSampler
    state: TrainerState
    total_steps: int

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes files."""
        return self.accelerator.is_main_process


def batch_sampler(cfg: TrainConfig, lengths: Any, world: int, rank: int) -> LengthGroupedBatchSampler:
    """The sampler of global batches (``batch_size * grad_accum`` examples per process) of process ``rank``."""
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
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * len(batch_sampler(cfg, train_lengths, num_processes, 0))))


def _continue_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer) -> None:
    """Set each group's LR to the (possibly extended) schedule's value at the restored step.

    The optimizer state holds the LR the old schedule gave; for an unchanged schedule this recomputes the same value
    the same way (``base_lr * lambda(step)``, as ``LambdaLR`` does), so an exact resume stays bit-identical.
    """
    for group, base_lr, lr_lambda in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base_lr * lr_lambda(scheduler.last_epoch)


def start_session(
    model: nn.Module,
    train_lengths: Any,
    cfg: TrainConfig,
    *,
    accelerator: Accelerator,
    resume: Path | None = None,
    data_sha256: str | None = None,
) -> TrainingSession:
    """Build optimizer, schedule and sampler for ``model``, restore a checkpoint if given, and prepare for training.

    Args:
        model: The model; only parameters with ``requires_grad`` are optimised (they should be fp32).
        train_lengths: Lengths of the training items (for the sampler).
        cfg: Optimisation and bookkeeping settings.
        accelerator: The run's ``Accelerator``.
        resume: A checkpoint directory to continue from.
        data_sha256: Fingerprint of the training data, stored in every checkpoint of a fresh run.

    Returns:
        The :class:`TrainingSession`.

    Raises:
        ElmtuneError: Nothing to train, or a checkpoint that does not match the model.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ElmtuneError("the model has no trainable parameters; apply an adapter first")
    sampler = batch_sampler(cfg, train_lengths, world, rank)
    total_steps = planned_total_steps(cfg, train_lengths, world)
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
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        restore_adapter(model, checkpoint.adapter_dir)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
        _continue_schedule(scheduler, optimizer)
        state = checkpoint.state
        state.data_sha256 = state.data_sha256 or data_sha256
        sampler.set_position(state.epoch, state.batch_in_epoch)
    state.total_steps, state.num_processes = total_steps, world
    prepared, optimizer = accelerator.prepare(model, optimizer)
    if resume is not None:  # after prepare, which may draw random numbers of its own
        restore_rng_states(*read_rng_states(resume, rank))
    unwrapped = accelerator.unwrap_model(prepared)
    return TrainingSession(
        cfg, accelerator, prepared, unwrapped, params, optimizer, scheduler, sampler, state, total_steps
    )
