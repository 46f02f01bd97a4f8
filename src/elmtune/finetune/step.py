"""One optimizer step: the large-batch gradient from micro-batches, clipping, AdamW and the LR schedule.

The step's global batch is cut into ``grad_accum`` micro-batches. The step's loss items are counted over all
micro-batches and processes first; each micro-batch's summed loss is then divided by that count before backward, so
the gradient is the large-batch gradient whatever the accumulation or process count. A step whose loss or gradient
norm is not finite is skipped (its gradient dropped) up to ``skip_nonfinite`` times; one more stops the run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from elmtune.finetune.objectives import Objective
from elmtune.finetune.run_log import ProgressReporter
from elmtune.finetune.session import TrainingSession
from elmtune.models.finite import NonFiniteError


@dataclass
class StepOutcome:
    """What one optimizer step measured.

    Attributes:
        loss_sum: () float64, this process's summed loss over the step's micro-batches.
        metric_sums: Name -> () float64, this process's sums of the objective's extra metrics.
        count: Loss items of the step, over all processes (what the sums are divided by).
        tokens: Tokens of the step, over all processes.
        grad_norm: The global gradient norm before clipping.
        lr: The learning rate the step used.
    """

    loss_sum: torch.Tensor
    metric_sums: dict[str, torch.Tensor]
    count: float
    tokens: float
    grad_norm: float
    lr: float


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor moved to ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _step_is_finite(loss_sum: torch.Tensor, grad_norm: torch.Tensor | float, session: TrainingSession) -> bool:
    """Whether every process's loss and the global gradient norm are finite.

    Under fp16 with a gradient scaler an infinite norm is the scaler's overflow signal (it skips that update and
    lowers the scale itself), so there only the loss counts.
    """
    accelerator = session.accelerator
    bad = torch.tensor(0.0 if bool(torch.isfinite(loss_sum)) else 1.0, device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    grad_ok = math.isfinite(float(grad_norm)) or accelerator.scaler is not None
    return grad_ok and float(bad) == 0.0


def _skip_nonfinite_step(session: TrainingSession, loss: float, grad_norm: float, progress: ProgressReporter) -> None:
    """Count a step whose loss or gradient is not finite and drop its gradient, or stop the run (one line)."""
    state, allowed = session.state, session.cfg.skip_nonfinite
    state.skipped_nonfinite += 1
    what = f"step {state.step + 1}: the loss is {loss:.4g} and the gradient norm {grad_norm:.4g}"
    if state.skipped_nonfinite > allowed:
        how_many = f" ({allowed} such steps allowed)" if allowed else ""
        raise NonFiniteError(
            f"{what}: training diverged{how_many} and stopped; nothing from this step was saved. Lower the learning "
            "rate (--lr) or raise skip_nonfinite"
        )
    progress.message(f"{what}: step skipped ({state.skipped_nonfinite} of {allowed} allowed)")


def _accumulate(
    session: TrainingSession, objective: Objective, micro: list[dict[str, Any]], scale: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward over the micro-batches (gradients synchronised on the last one); the summed losses."""
    accelerator = session.accelerator
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)  # ()
    metric_sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro):
        sync = i == len(micro) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(session.model):
            with accelerator.autocast():
                out = objective(session.model, batch)
            accelerator.backward(out.loss_sum * scale)
        loss_sum += out.loss_sum.detach().double()
        for key, value in out.metrics.items():
            metric_sums[key] = metric_sums.get(key, 0) + value.double()
    return loss_sum, metric_sums


def micro_batches(
    dataset: Sequence[Any], indices: list[int], collate: Callable[[list[Any]], dict[str, Any]], size: int
) -> list[dict[str, Any]]:
    """The micro-batches of ``size`` items of ``dataset[indices]``; each carries its items' indices as ``item_index``.

    ``item_index`` (B,) int64 is where an objective finds per-item values computed before training (the
    precomputed reference log-probabilities of preference pairs).
    """
    batches = []
    for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        batch = collate([dataset[i] for i in chunk])
        batch["item_index"] = torch.tensor(chunk, dtype=torch.long)  # (B,)
        batches.append(batch)
    return batches


def train_step(
    session: TrainingSession,
    objective: Objective,
    micro: list[dict[str, Any]],
    progress: ProgressReporter,
) -> StepOutcome:
    """Run one optimizer step on this process's micro-batches of the global batch and advance the counters.

    Args:
        session: The run.
        objective: The loss.
        micro: This process's micro-batches of the step (:func:`micro_batches`: ``grad_accum`` of ``batch_size``
            items, fewer at the end of the data).
        progress: Where a skipped step is reported.

    Returns:
        The :class:`StepOutcome`.

    Raises:
        NonFiniteError: More non-finite steps than ``skip_nonfinite`` allows.
    """
    accelerator, cfg, state = session.accelerator, session.cfg, session.state
    micro = [to_device(batch, accelerator.device) for batch in micro]
    local = torch.tensor(
        [sum(objective.count(b) for b in micro), sum(objective.tokens(b) for b in micro)],
        dtype=torch.float64,
        device=accelerator.device,
    )  # (2,) loss items and tokens of this process
    count, tokens = accelerator.reduce(local, "sum").tolist()
    loss_sum, metric_sums = _accumulate(session, objective, micro, accelerator.num_processes / max(count, 1.0))
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = float(accelerator.clip_grad_norm_(session.params, max_norm))
    lr = session.optimizer.param_groups[0]["lr"]
    if _step_is_finite(loss_sum, grad_norm, session):
        session.optimizer.step()
    else:
        _skip_nonfinite_step(session, float(loss_sum), grad_norm, progress)
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += int(tokens)
    return StepOutcome(loss_sum, metric_sums, count, tokens, grad_norm, lr)
