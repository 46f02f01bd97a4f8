"""What a run records after its steps: metrics rows, validation losses, checkpoints, and at the end ``final/``.

Only the main process writes files; every process takes part in the reductions, the validation and the gathering of
RNG states, so they all call :meth:`RunRecorder.after_step`.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from elmtune.datasets.prepare import PreparedData
from elmtune.finetune.adapter_card import write_adapter_card
from elmtune.finetune.checkpoint import rng_states, save_checkpoint
from elmtune.finetune.objectives import Objective
from elmtune.finetune.run_log import MetricsWriter, ProgressReporter, progress_stats
from elmtune.finetune.session import TrainingSession
from elmtune.finetune.step import StepOutcome, to_device
from elmtune.finetune.trackers import log_row
from elmtune.models.finite import require_finite_parameters
from elmtune.output_paths import StagedDirectory

SaveAdapter = Callable[[nn.Module, Path], None]
"""Writes the adapter of a model (PEFT format) into a directory."""


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak, MPS driver memory, or peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps" and hasattr(torch, "mps"):
        return torch.mps.driver_allocated_memory() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak RSS: bytes on macOS, KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@dataclass
class Validation:
    """A validation pass: the mean loss per item and the objective's metrics, each divided by the item count.

    Attributes:
        loss: Mean loss per item (per target token for SFT, per pair for preference optimisation).
        metrics: Name -> mean over the items (``rewards/accuracies``, ``logps/chosen``, ...).
    """

    loss: float
    metrics: dict[str, float]

    def row(self, step: int) -> dict[str, Any]:
        """The ``metrics.jsonl`` row, under TRL's ``eval_`` prefix (``eval_loss``, ``eval_rewards/accuracies``, ...)."""
        return {"step": step, "eval_loss": self.loss, **{f"eval_{key}": value for key, value in self.metrics.items()}}


def evaluate_loss(
    model: nn.Module,
    objective: Objective,
    items: Any,
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    accelerator: Accelerator,
) -> Validation:
    """Mean loss and metrics per item (e.g. per target token) over ``items``, sharded over processes, in order."""
    model.eval()
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), dtype=torch.float64, device=accelerator.device)}
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    mine = list(range(accelerator.process_index, len(items), accelerator.num_processes))
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = to_device(collate([items[i] for i in mine[start : start + batch_size]]), accelerator.device)
            with accelerator.autocast():
                out = objective(model, batch)
            sums["loss"] = sums["loss"] + out.loss_sum.double()
            for key, value in out.metrics.items():
                sums[key] = sums.get(key, 0) + value.double()
            count += objective.count(batch)
    model.train()
    totals = accelerator.reduce(torch.stack(list(sums.values())), "sum")  # (1 + metrics,)
    count = accelerator.reduce(count, "sum")
    means = (totals / count).tolist() if count > 0 else [float("nan")] * len(sums)
    return Validation(means[0], dict(zip(list(sums)[1:], means[1:], strict=True)))


def publish_final(model: nn.Module, save_adapter: SaveAdapter, run_dir: Path) -> Path:
    """Write the trained adapter and its model card to ``run_dir/final`` atomically (replacing an older one).

    The card (``README.md``, see :mod:`elmtune.finetune.adapter_card`) summarises the run from its ``config.yaml``
    and ``metrics.jsonl``.

    Returns:
        The ``final/`` directory.

    Raises:
        NonFiniteError: The adapter holds NaN or infinite weights (nothing is written).
    """
    require_finite_parameters(model, "the final adapter", trainable_only=True)
    staged = StagedDirectory(run_dir / "final", overwrite=True)
    with staged as directory:
        save_adapter(model, directory)
        write_adapter_card(directory, run_dir, model)
        return staged.commit()


@dataclass
class RunRecorder:
    """Logs, evaluates and checkpoints a run as its settings say.

    Attributes:
        data: The run's data (validation items and collate function).
        objective: The loss (for validation).
        run_dir: The run directory.
        run_config: The full run configuration, stored in every checkpoint.
        save_adapter: Writes the adapter of a model into a directory.
        progress: The progress bar / log lines.
        writer: ``metrics.jsonl`` (main process only).
        last_loss: The last logged training loss.
        eval_loss: The last validation loss.
    """

    data: PreparedData
    objective: Objective
    run_dir: Path
    run_config: dict[str, Any]
    save_adapter: SaveAdapter
    progress: ProgressReporter
    writer: MetricsWriter | None
    last_loss: float | None = None
    eval_loss: float | None = None
    _window_tokens: int = 0
    _window_start: float = field(default_factory=time.perf_counter)

    def record(self, row: dict[str, Any], session: TrainingSession) -> None:
        """Append ``row`` to the run's history (saved in checkpoints) and ``metrics.jsonl``; send it to the trackers."""
        session.state.log_history.append(row)
        if self.writer:
            self.writer.write(row)
        log_row(session.accelerator, row)

    def log(self, session: TrainingSession, outcome: StepOutcome) -> None:
        """Reduce the step's sums over processes and write its metrics row."""
        state, sampler = session.state, session.sampler
        sums = torch.stack([outcome.loss_sum, *outcome.metric_sums.values()])  # (1 + metrics,)
        totals = session.accelerator.reduce(sums, "sum") / max(outcome.count, 1)
        self.last_loss = float(totals[0])
        now = time.perf_counter()
        row = {
            "step": state.step,
            "epoch": round(sampler.epoch + sampler.batch_index / len(sampler), 4),
            "loss": self.last_loss,
            **{key: float(v) for key, v in zip(outcome.metric_sums, totals[1:].tolist(), strict=True)},
            "lr": outcome.lr,
            "grad_norm": outcome.grad_norm,
            **({"skipped_nonfinite": state.skipped_nonfinite} if session.cfg.skip_nonfinite else {}),
            "tokens": int(outcome.tokens),
            "tokens_per_s": self._window_tokens / max(now - self._window_start, 1e-9),
            "elapsed_s": round(state.elapsed_s, 3),
            "peak_memory_mb": round(peak_memory_mb(session.accelerator.device), 1),
        }
        self._window_tokens, self._window_start = 0, now
        self.record(row, session)
        self.progress.update(state.step, row)

    def evaluate(self, session: TrainingSession) -> None:
        """Compute and record the validation loss and metrics."""
        data, step = self.data, session.state.step
        batch_size = session.cfg.batch_size
        validation = evaluate_loss(
            session.model, self.objective, data.validation, data.collate, batch_size, session.accelerator
        )
        self.eval_loss = validation.loss
        self.record(validation.row(step), session)
        self.progress.message(f"step {step}: validation {progress_stats(validation.row(step), prefix='eval_')}")

    def save(self, session: TrainingSession) -> None:
        """Write a checkpoint of the current step (the main process writes; every process's RNG states go in)."""
        state, accelerator = session.state, session.accelerator
        state.epoch, state.batch_in_epoch = session.sampler.epoch, session.sampler.batch_index
        rng = gather_object([rng_states()]) if accelerator.num_processes > 1 else [rng_states()]  # by rank
        if session.is_main:

            def write_adapter(directory: Path) -> None:
                require_finite_parameters(session.unwrapped, f"the adapter at step {state.step}", trainable_only=True)
                self.save_adapter(session.unwrapped, directory)

            path = save_checkpoint(
                self.run_dir / "checkpoints",
                state,
                write_adapter=write_adapter,
                optimizer=session.optimizer,
                scheduler=session.scheduler,
                config=self.run_config,
                keep_last=session.cfg.keep_last,
                rng=rng,
            )
            self.progress.message(f"checkpoint {path}")
        accelerator.wait_for_everyone()

    def after_step(self, session: TrainingSession, outcome: StepOutcome) -> None:
        """Log, evaluate and checkpoint as ``log_every``, ``eval_every`` and ``save_every`` say (all at the end)."""
        cfg, step = session.cfg, session.state.step
        self._window_tokens += int(outcome.tokens)
        at_end = step == session.total_steps
        if step % cfg.log_every == 0 or at_end:
            self.log(session, outcome)
        if self.data.validation is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or at_end):
            self.evaluate(session)
        if (cfg.save_every and step % cfg.save_every == 0) or at_end:
            self.save(session)
