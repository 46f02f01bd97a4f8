"""The one training loop. The loss is a parameter (an :class:`~elmtune.finetune.objectives.Objective`).

Read in order: :func:`~elmtune.finetune.session.start_session` sets up (optimizer, schedule, data order, a resumed
checkpoint); per optimizer step, :func:`~elmtune.finetune.step.train_step` takes this process's slice of the next
global batch from the resumable length-grouped sampler and computes the large-batch gradient, clips, and steps AdamW
(fp32 states) and the LR schedule; :class:`~elmtune.finetune.run_outputs.RunRecorder` then logs, evaluates and
checkpoints as configured. At the end the adapter is published to ``final/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch import nn

from elmtune.datasets.prepare import PreparedData
from elmtune.finetune.config import TrainConfig
from elmtune.finetune.objectives import Objective
from elmtune.finetune.run_log import MetricsWriter, ProgressReporter, plot_loss_curve
from elmtune.finetune.run_outputs import RunRecorder, SaveAdapter, publish_final
from elmtune.finetune.session import TrainingSession, start_session
from elmtune.finetune.step import micro_batches, train_step


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


def _open_recorder(
    session: TrainingSession,
    data: PreparedData,
    objective: Objective,
    note: str,
    *,
    run_dir: Path,
    run_config: dict[str, Any],
    save_adapter: SaveAdapter,
) -> RunRecorder:
    """The run's recorder, with the opening log lines written."""
    cfg, state, world, main = session.cfg, session.state, session.accelerator.num_processes, session.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(run_dir / "metrics.jsonl", truncate_after_step=state.step) if main else None
    progress = ProgressReporter(
        session.total_steps, start_step=state.step, enabled=main, print_every=max(1, cfg.log_every)
    )
    progress.message(note)
    progress.message(
        f"{world} process(es); global batch {cfg.batch_size * cfg.grad_accum * world} examples "
        f"({cfg.batch_size} x {cfg.grad_accum} accumulation x {world}); {session.total_steps} steps"
    )
    progress.message(data.summary())
    last_loss, eval_loss = last_losses(state.log_history)  # what a resumed run that has no steps left reports
    return RunRecorder(data, objective, run_dir, run_config, save_adapter, progress, writer, last_loss, eval_loss)


def _finish(session: TrainingSession, recorder: RunRecorder) -> TrainResult:
    """Publish ``final/`` and the loss curve (main process) and describe the run."""
    recorder.progress.close()
    run_dir = recorder.run_dir
    final, curve, metrics_path = run_dir / "final", None, run_dir / "metrics.jsonl"
    if session.is_main:
        final = publish_final(session.unwrapped, recorder.save_adapter, run_dir)
        recorder.writer.close()
        title = str(recorder.run_config.get("model", ""))
        curve = plot_loss_curve(metrics_path, run_dir / "loss_curve.png", title=title)
    session.accelerator.wait_for_everyone()
    steps = session.state.step
    return TrainResult(run_dir, final, steps, recorder.last_loss, recorder.eval_loss, metrics_path, curve)


def train(
    model: nn.Module,
    objective: Objective,
    data: PreparedData,
    cfg: TrainConfig,
    *,
    run_dir: Path,
    run_config: dict[str, Any],
    accelerator: Accelerator,
    save_adapter: SaveAdapter,
    note: str = "",
    resume: Path | None = None,
    data_sha256: str | None = None,
    opening_rows: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` (an adapter on a frozen base) on ``data`` with ``objective``.

    Args:
        model: The model; only parameters with ``requires_grad`` are optimised (they should be fp32).
        objective: The loss (see :mod:`elmtune.finetune.objectives`).
        data: Prepared training (and optional validation) data.
        cfg: Optimisation and bookkeeping settings.
        run_dir: The run directory (created if needed).
        run_config: The full run configuration, stored in every checkpoint.
        accelerator: The run's ``Accelerator`` (device, mixed precision, processes).
        save_adapter: Writes the adapter of a model (PEFT format) into a directory.
        note: A line for the log saying how the run computes (device and precision).
        resume: A checkpoint directory to continue from.
        data_sha256: Fingerprint of the training data, stored in every checkpoint of a fresh run (see
            :mod:`elmtune.finetune.resume_check`).
        opening_rows: Fields to record in ``metrics.jsonl`` at the run's current step before training (e.g. the
            reference precompute's time and memory).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ElmtuneError: Nothing to train, or a checkpoint that does not match.
    """
    session = start_session(
        model, data.train_lengths, cfg, accelerator=accelerator, resume=resume, data_sha256=data_sha256
    )
    recorder = _open_recorder(
        session, data, objective, note, run_dir=run_dir, run_config=run_config, save_adapter=save_adapter
    )
    for row in opening_rows or []:
        recorder.record({"step": session.state.step, **row}, session)
    batches = iter(session.sampler)
    session.model.train()
    while session.state.step < session.total_steps:
        indices = next(batches, None)
        if indices is None:  # the end of an epoch: the sampler starts the next one
            batches = iter(session.sampler)
            continue
        step_start = time.perf_counter()
        micro = micro_batches(data.train, indices, data.collate, cfg.batch_size)
        outcome = train_step(session, objective, micro, recorder.progress)
        session.state.elapsed_s += time.perf_counter() - step_start
        recorder.after_step(session, outcome)
    return _finish(session, recorder)
