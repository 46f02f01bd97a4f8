"""``run_training``: from a :class:`RunConfig` to a trained adapter in a self-describing run directory.

Run directory::

    config.yaml          the full run config (what ``--config`` would need to reproduce the run)
    metrics.jsonl        one row per logged step: loss, lr, grad_norm, tokens/s, elapsed, peak memory
    checkpoints/         step-XXXXXXXX/ (adapter, optimizer, scheduler, RNG, data position, config)
    final/               the trained adapter (PEFT format, with elmtune metadata)
    loss_curve.png       training and validation loss
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from elmtune.errors import ElmtuneError
from elmtune.finetune.checkpoint import checkpoint_dirs, latest_checkpoint
from elmtune.finetune.config import RunConfig
from elmtune.finetune.loop import TrainResult, train

logger = logging.getLogger(__name__)


def resolve_resume(run_dir: Path, resume: bool | str | Path | None) -> Path | None:
    """The checkpoint to resume from: ``True`` means the latest one in ``run_dir``; a path is used as given.

    Raises:
        ElmtuneError: Nothing to resume from, or a fresh run would overwrite an existing run's checkpoints.
    """
    if resume is None or resume is False:
        if checkpoint_dirs(run_dir / "checkpoints"):
            raise ElmtuneError(
                f"{run_dir} already holds checkpoints; pass --resume to continue that run or choose "
                "another --output-dir"
            )
        return None
    if resume is True:
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise ElmtuneError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        return found
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise ElmtuneError(f"--resume-from {path}: not a checkpoint directory (no trainer_state.json)")
    return path


def run_training(config: RunConfig, *, resume: bool | str | Path | None = None) -> TrainResult:
    """Load model and data, apply the adapter and train, as ``config`` says.

    Args:
        config: The run configuration.
        resume: ``True`` to continue from the latest checkpoint in the run directory, or a checkpoint path.

    Returns:
        The :class:`TrainResult` (run directory, final adapter, last losses).

    Raises:
        ElmtuneError: Bad model/data/adapter settings, or nothing to resume from.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from elmtune.adapters import apply_adapter, save_adapter
    from elmtune.datasets import prepare_data
    from elmtune.finetune.device import plan_precision, resolve_device
    from elmtune.finetune.objectives import build_objective
    from elmtune.models import load_model, load_tokenizer

    cfg = config.train
    run_dir = Path(cfg.output_dir)
    checkpoint = resolve_resume(run_dir, resume)
    plan = plan_precision(resolve_device(cfg.device), cfg.precision, cfg.base_dtype)
    accelerator = Accelerator(cpu=plan.device.type == "cpu", mixed_precision=plan.accelerate_mixed_precision)
    set_seed(cfg.seed)  # the random weights of a preset base and the adapter's initialisation depend on it
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config.data, tokenizer)
    if (data.kind == "preference") != (cfg.objective == "dpo"):
        raise ElmtuneError(
            f"objective {cfg.objective} does not fit {data.kind} data: use --objective dpo with "
            "preference pairs (prompt/chosen/rejected) and sft with everything else"
        )
    model = load_model(config.model, dtype=plan.base_dtype)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    model = apply_adapter(model, config.adapter)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    torch.manual_seed(cfg.seed)
    return train(
        model,
        build_objective(cfg.objective, z_loss=cfg.z_loss, beta=cfg.beta, preference_loss=cfg.preference_loss),
        data,
        cfg,
        run_dir=run_dir,
        run_config=config.to_dict(),
        plan=plan,
        save_adapter=lambda m, d: save_adapter(m, d, base_name=config.model),
        resume=checkpoint,
        accelerator=accelerator,
    )
