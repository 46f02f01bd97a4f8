"""Running one build stage: the one library function its command calls, with ``@NAME`` resolved to paths.

``sft``/``dpo`` call :func:`~elmtune.finetune.run.run_training` (``resume=True`` to continue an interrupted run),
``eval`` :func:`~elmtune.evaluation.run_eval`, ``merge`` :func:`~elmtune.merging.run.merge_to_directory`, ``export``
:func:`~elmtune.models.gguf.export_gguf` (and :func:`~elmtune.models.gguf_check.check_gguf` with ``check``), and
``generate`` :func:`~elmtune.inference.generate_file`. Each returns a one-line summary for the build's progress.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from elmtune.build.plan import StagePlan
from elmtune.build.recipe import Stage

Resolve = Callable[[str | None], str | None]
"""An input value with ``@NAME`` replaced by the path of that stage's output (None stays None)."""


def _train(stage: Stage, plan: StagePlan, resolve: Resolve) -> str:
    from elmtune.finetune.run import run_training

    config = stage.settings
    config = dataclasses.replace(
        config,
        model=resolve(stage.model),
        start_from=resolve(stage.adapter),
        train=dataclasses.replace(config.train, output_dir=str(plan.directory)),
    )
    resuming = plan.action == "resume"
    result = run_training(config, resume=True if resuming else None, overwrite=not resuming)
    loss = "n/a" if result.last_loss is None else f"{result.last_loss:.4f}"
    return f"{result.steps} steps, last loss {loss}"


def _eval(stage: Stage, plan: StagePlan, resolve: Resolve) -> str:
    from elmtune.evaluation import ModelSpec, run_eval

    adapter = resolve(stage.adapter)
    spec = ModelSpec(
        resolve(stage.model), adapter=None if adapter is None else Path(adapter), tokenizer=resolve(stage.tokenizer)
    )
    report = run_eval(spec, stage.settings, output_dir=plan.directory, overwrite=True)
    return report.markdown()


def _merge(stage: Stage, plan: StagePlan, resolve: Resolve) -> str:
    from elmtune.merging.run import merge_to_directory

    options = dataclasses.replace(stage.settings, overwrite=True)
    result = merge_to_directory(resolve(stage.model), Path(str(resolve(stage.adapter))), plan.directory, options)
    check = result.report.verification
    if check is None:
        return f"{result.report.dtype}; merge check skipped (verify: false)"
    numbers = check.comparison
    return (
        f"{result.report.dtype}; merge check passed: max |logit diff| {numbers.max_abs_diff:.3g}, "
        f"top-1 agreement {numbers.top1_agreement:.2%}"
    )


def _export(stage: Stage, plan: StagePlan, resolve: Resolve) -> str:
    from elmtune.models.gguf import export_gguf

    settings = stage.settings
    model_dir = str(resolve(stage.model))
    if settings.check:
        from elmtune.models.gguf_check import require_llama_cpp

        require_llama_cpp()  # fail before the export, not after it
    report = export_gguf(model_dir, plan.output, settings.outtype, name=settings.general_name, overwrite=True)
    summary = f"{report.outtype}, {report.file_bytes / 2**20:.1f} MiB, {report.parameter_count:,} parameters"
    if settings.check:
        from elmtune.models.gguf_check import check_gguf

        result = check_gguf(report.path, model_dir)
        summary += f"; llama.cpp top-1 agreement {result.top1_agreement:.1%}"
    return summary


def _generate(stage: Stage, plan: StagePlan, resolve: Resolve) -> str:
    from elmtune.build.generate_settings import run_generate_stage

    return run_generate_stage(stage, plan, resolve)


RUNNERS: dict[str, Callable[[Stage, StagePlan, Resolve], str]] = {
    "sft": _train,
    "dpo": _train,
    "eval": _eval,
    "merge": _merge,
    "export": _export,
    "generate": _generate,
}


def run_stage(plan: StagePlan, resolve: Resolve) -> str:
    """Run the stage of ``plan`` into its directory and return a one-line (eval: a table) summary.

    Raises:
        ElmtuneError: Whatever the stage's library function raises.
    """
    plan.directory.mkdir(parents=True, exist_ok=True)
    return RUNNERS[plan.stage.kind](plan.stage, plan, resolve)


__all__ = ["RUNNERS", "Resolve", "run_stage"]
