"""``run_training``: from a :class:`RunConfig` to a trained adapter in a self-describing run directory.

Run directory::

    config.yaml          the full run config (what ``--config`` would need to reproduce the run)
    metrics.jsonl        one row per logged step: loss, lr, grad_norm, tokens/s, elapsed, peak memory
    data_report.json     the data after loading and tokenisation: rows, examples kept/truncated/dropped, tokens
    checkpoints/         step-XXXXXXXX/ (adapter, optimizer, scheduler, RNG, data position, config)
    final/               the trained adapter (PEFT format, with elmtune metadata), its model card and the tokenizer
    loss_curve.png       training and validation loss
    reference_logps.*    with precompute_reference: every training pair's reference log-probs and their cache key
    trackers/            with report_to: TensorBoard events, wandb's local run, an MLflow file store
    .lock                locked while a run writes here; holds its pid

Everything that can refuse a run (output directory, lock, resume settings, checkpoint integrity) is checked before
the first byte is written to the run directory.

A run's random numbers (adapter initialisation, then dropout) come from one seeding, ``seed + process index``: each
process draws its own dropout masks, and data parallelism starts every process from process 0's initial weights. A
resume restores the streams saved in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from elmtune.errors import ElmtuneError
from elmtune.file_digest import data_fingerprint
from elmtune.finetune.adapter_tokenizer import with_tokenizer
from elmtune.finetune.checkpoint import TrainerState, checkpoint_dirs, read_checkpoint_meta
from elmtune.finetune.checkpoint_integrity import checkpoint_problem
from elmtune.finetune.config import RunConfig
from elmtune.finetune.data_report import write_data_report
from elmtune.finetune.loop import TrainResult, last_losses, train
from elmtune.finetune.output_dir import check_fresh_output_dir, clear_previous_run, create_run_dir
from elmtune.finetune.policy import Policy, with_starting_adapter
from elmtune.finetune.resume_check import check_planned_steps, check_same_run, differing_settings
from elmtune.finetune.run_lock import RunLock, lock_holder
from elmtune.finetune.run_report import write_run_report
from elmtune.finetune.session import planned_total_steps
from elmtune.finetune.trackers import require_tracker_packages, tracking

if TYPE_CHECKING:
    from accelerate import Accelerator

    from elmtune.datasets.prepare import PreparedData
    from elmtune.finetune.objectives import Objective, PreferenceObjective
    from elmtune.finetune.reference import ReferenceLogps
    from elmtune.finetune.reference_cache import ReferenceCacheReport
    from elmtune.models.device import PrecisionPlan

logger = logging.getLogger(__name__)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _intact_latest(run_dir: Path, warn: bool) -> Path:
    """The newest checkpoint that passes :func:`checkpoint_problem`; skipped ones are named in a warning line."""
    root = run_dir / "checkpoints"
    candidates = checkpoint_dirs(root)[::-1]
    if not candidates:
        raise ElmtuneError(f"--resume: no checkpoint in {root}; start a fresh run instead")
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped and warn:
                _warn(f"--resume: skipping damaged checkpoint(s) {'; '.join(skipped)}; resuming from {path}")
            return path
        skipped.append(f"{path} ({problem})")
    raise ElmtuneError(f"--resume: no intact checkpoint in {root}: {'; '.join(skipped)}; start a fresh run instead")


def resolve_resume(run_dir: Path, resume: bool | str | Path | None, *, warn: bool = True) -> Path | None:
    """The checkpoint to resume from: ``True`` means the newest intact one in ``run_dir``; a path is used as given.

    Args:
        run_dir: The run directory.
        resume: None/False for a fresh run, True for the latest checkpoint, or a checkpoint directory.
        warn: Print a warning line naming each damaged checkpoint that was skipped.

    Raises:
        ElmtuneError: Nothing (intact) to resume from, a damaged ``--resume-from`` checkpoint, or a fresh run
            over an existing run's checkpoints.
    """
    if resume is None or resume is False:
        if checkpoint_dirs(run_dir / "checkpoints"):
            raise ElmtuneError(
                f"{run_dir} already holds checkpoints; pass --resume to continue that run or choose "
                "another --output-dir"
            )
        return None
    if not run_dir.is_dir():
        raise ElmtuneError(f"--resume: the run directory {run_dir} does not exist; check --output-dir")
    if resume is True:
        return _intact_latest(run_dir, warn)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ElmtuneError(f"--resume-from {path}: not a checkpoint directory (no trainer_state.json)")
    problem = checkpoint_problem(path)
    if problem:
        raise ElmtuneError(f"--resume-from {path}: the checkpoint is damaged ({problem}); pick another checkpoint")
    return path


def _check_resume(
    config: RunConfig, resume: bool | str | Path, *, num_processes: int, main: bool, data_sha256: str | None
) -> tuple[Path, TrainerState, list[str]]:
    """Pick the checkpoint to resume from and check that the given settings continue its run (reads only).

    Args:
        config: The given run configuration.
        resume: ``True`` or a checkpoint path (as for :func:`resolve_resume`).
        num_processes: Processes of this launch.
        main: This is the process that will write (it probes the lock and prints warnings).
        data_sha256: Fingerprint of the given data.

    Returns:
        The checkpoint, its trainer state, and the names of the run's checkpoints at the time of the check.

    Raises:
        ElmtuneError: The directory is in use, nothing intact to resume from, or the settings differ.
    """
    run_dir = Path(config.train.output_dir)
    holder = lock_holder(run_dir) if main else None
    if holder:
        raise ElmtuneError(f"{run_dir} is in use by another elmtune run ({holder})")
    checkpoint = resolve_resume(run_dir, resume, warn=main)
    seen = [p.name for p in checkpoint_dirs(run_dir / "checkpoints")]
    state, stored_config = read_checkpoint_meta(checkpoint)
    differences = differing_settings(
        stored_config, config.to_dict(), state, num_processes=num_processes, data_sha256=data_sha256
    )
    check_same_run(run_dir, differences)
    return checkpoint, state, seen


def _finished(run_dir: Path, state: TrainerState) -> TrainResult:
    """The result of resuming a run that has already trained all its steps and written ``final/``."""
    last_loss, eval_loss = last_losses(state.log_history)
    curve = run_dir / "loss_curve.png"
    return TrainResult(
        run_dir,
        run_dir / "final",
        state.step,
        last_loss,
        eval_loss,
        run_dir / "metrics.jsonl",
        curve if curve.is_file() else None,
        already_finished=True,
    )


def _start_writing(
    run_dir: Path, config: RunConfig, data: PreparedData, *, overwrite: bool, checkpoints_seen: list[str] | None
) -> RunLock:
    """Lock the run directory, check again that nothing changed, and prepare it for writing (main process only).

    Args:
        run_dir: The run directory.
        config: The run configuration (written to ``config.yaml``).
        data: The prepared data (its counts are written to ``data_report.json``).
        overwrite: Delete a previous run's files first (fresh runs).
        checkpoints_seen: For a resume, the checkpoint names found by the checks (None for a fresh run).

    Raises:
        ElmtuneError: Another run holds the directory, or changed it while this one was starting.
    """
    if checkpoints_seen is None:
        create_run_dir(run_dir)
    lock = RunLock(run_dir)
    try:
        if checkpoints_seen is None:
            # again, now that no other run can write here
            check_fresh_output_dir(run_dir, overwrite=overwrite, locked=True)
            if overwrite:
                clear_previous_run(run_dir)
        elif [p.name for p in checkpoint_dirs(run_dir / "checkpoints")] != checkpoints_seen:
            raise ElmtuneError(f"--resume: {run_dir} changed while this run was starting; run the command again")
        lock.claim()
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        write_data_report(run_dir, data)
    except BaseException:
        lock.release()
        raise
    return lock


def _with_precomputed_reference(
    objective: PreferenceObjective,
    policy: Policy,
    config: RunConfig,
    data: PreparedData,
    plan: PrecisionPlan,
    accelerator: Accelerator,
) -> tuple[PreferenceObjective, ReferenceCacheReport]:
    """``objective`` with every training pair's reference log-probs, from the run directory's cache or computed."""
    from elmtune.finetune.reference_cache import (
        adapter_files_sha256,
        compute_reference_logps,
        load_or_compute,
        tokens_sha256,
    )

    parts = {
        "data": tokens_sha256(data.train),
        "model": str(policy.base_weights_sha256),
        "start_adapter": adapter_files_sha256(config.start_from),
        "compute": f"base {plan.base_dtype}, precision {plan.precision}, {accelerator.device.type}"
        + ("" if objective.share_prompt else ", separate rows"),
    }
    model = policy.model.to(accelerator.device)

    def compute() -> ReferenceLogps:
        return compute_reference_logps(model, objective, data.train, data.collate, config.train.batch_size, accelerator)

    table, report = load_or_compute(Path(config.train.output_dir), parts, compute, accelerator, _warn)
    return dataclasses.replace(objective, precomputed=table.to(accelerator.device)), report


def _run_objective(
    config: RunConfig, policy: Policy, data: PreparedData, plan: PrecisionPlan, accelerator: Accelerator
) -> tuple[Objective, list[str], list[dict[str, Any]]]:
    """The run's objective, with the reference log-probs precomputed when asked; log lines and metrics rows."""
    from elmtune.finetune.objectives import build_objective

    cfg = config.train
    objective = build_objective(
        cfg.objective,
        z_loss=cfg.z_loss,
        beta=cfg.beta,
        preference_loss=cfg.preference_loss,
        label_smoothing=cfg.label_smoothing,
        reference_adapter=policy.reference_adapter,
        share_prompt=cfg.share_prompt,
    )
    if not cfg.precompute_reference:
        return objective, [], []
    objective, report = _with_precomputed_reference(objective, policy, config, data, plan, accelerator)
    return objective, [report.line()], [report.row()] if report.computed else []


def _reported(result: TrainResult, main: bool) -> TrainResult:
    """``result``, once the main process has written the run's report (after ``final/`` is published)."""
    if main:
        write_run_report(result.run_dir)
    return result


def _accelerator(plan: PrecisionPlan, report_to: tuple[str, ...]) -> Accelerator:
    """The run's one ``Accelerator``: its device and mixed precision.

    ``report_to``'s packages are checked here; the trackers start in :func:`tracking`, once a resume's checkpoint is
    known.
    """
    from accelerate import Accelerator

    require_tracker_packages(report_to)
    return Accelerator(cpu=plan.device.type == "cpu", mixed_precision=plan.accelerate_mixed_precision)


def run_training(config: RunConfig, *, resume: bool | str | Path | None = None, overwrite: bool = False) -> TrainResult:
    """Load model and data, apply the adapter and train, as ``config`` says.

    Nothing is written to the run directory before every check has passed: a fresh run needs an empty directory
    (or ``overwrite``), a resume needs the stored run-defining settings (see :mod:`elmtune.finetune.resume_check`)
    and an intact checkpoint (a damaged newest one is skipped with a warning), and either needs the directory's lock.

    Args:
        config: The run configuration.
        resume: ``True`` to continue from the latest intact checkpoint in the run directory, or a checkpoint path.
        overwrite: A fresh run may replace a previous elmtune run in the output directory.

    Returns:
        The :class:`TrainResult` (run directory, final adapter, last losses); ``already_finished`` when a resumed
        run had nothing left to train (only its report was rendered again).

    Raises:
        ElmtuneError: Bad model/data/adapter settings, an unusable output directory, another run using it, or a
            resume that does not match the stored run.
    """
    from accelerate.utils import set_seed

    from elmtune.adapters import save_adapter
    from elmtune.datasets import prepare_data
    from elmtune.finetune.policy import build_policy
    from elmtune.models import load_tokenizer
    from elmtune.models.device import plan_precision, resolve_device

    config = with_starting_adapter(config)
    cfg = config.train
    run_dir = Path(cfg.output_dir)
    fresh = resume is None or resume is False
    plan = plan_precision(resolve_device(cfg.device), cfg.precision, cfg.base_dtype)
    accelerator = _accelerator(plan, cfg.report_to)
    main, world = accelerator.is_main_process, accelerator.num_processes
    if fresh and main:  # only the process that writes: the others would see its first files
        check_fresh_output_dir(run_dir, overwrite=overwrite)
    data_sha256 = data_fingerprint(config.data.path)
    checkpoint = stored = checkpoints_seen = None
    if not fresh:
        checkpoint, stored, checkpoints_seen = _check_resume(
            config, resume, num_processes=world, main=main, data_sha256=data_sha256
        )
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config.data, tokenizer)
    if (data.kind == "preference") != (cfg.objective == "dpo"):
        raise ElmtuneError(
            f"objective {cfg.objective} does not fit {data.kind} data: use --objective dpo with "
            "preference pairs (prompt/chosen/rejected) and sft with everything else"
        )
    if stored is not None:
        total_steps = planned_total_steps(cfg, data.train_lengths, world)
        check_planned_steps(run_dir, stored, total_steps)
        if stored.step == total_steps and (run_dir / "final").is_dir():
            return _reported(_finished(run_dir, stored), main)  # the report is rendered again
    set_seed(cfg.seed + accelerator.process_index)  # the run's one seeding (module docstring)
    policy = build_policy(config, plan.base_dtype, digest_base=cfg.precompute_reference)
    lock = None
    if main:
        lock = _start_writing(run_dir, config, data, overwrite=overwrite, checkpoints_seen=checkpoints_seen)
    try:
        with tracking(accelerator, run_dir, config.to_dict(), cfg.report_to, stored.step if stored else None):
            objective, notes, opening_rows = _run_objective(config, policy, data, plan, accelerator)
            result = train(
                policy.model,
                objective,
                data,
                cfg,
                run_dir=run_dir,
                run_config=config.to_dict(),
                accelerator=accelerator,
                save_adapter=with_tokenizer(lambda m, d: save_adapter(m, d, base_name=config.model), tokenizer),
                note="\n".join([plan.note, *notes]),
                resume=checkpoint,
                data_sha256=data_sha256,
                opening_rows=opening_rows,
            )
            return _reported(result, main)
    finally:
        if lock is not None:
            lock.release()
