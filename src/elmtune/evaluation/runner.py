"""``run_eval``: load the model(s), run every task of the chosen protocol, write the outputs."""

from __future__ import annotations

import gc
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune import __version__
from elmtune.evaluation import commonsense, lmeval_tasks
from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.data import DataError, pick_tasks, resolve_data
from elmtune.evaluation.loading import ModelSpec, load_for_eval
from elmtune.evaluation.protocols import run_apple, run_llm_adapters, run_lm_eval_task, run_mc
from elmtune.evaluation.report import PROTOCOL_DESCRIPTIONS, EvalReport, ModelResults, TaskResult, settings_dict
from elmtune.evaluation.scoring import LoglikelihoodScorer
from elmtune.output_paths import check_output_dir

logger = logging.getLogger(__name__)


def _task_files(config: EvalConfig) -> dict[str, Path | None]:
    """``{task: file}`` for the configured protocol (file None: read the Hub dataset)."""
    available = resolve_data(config.data)
    if config.protocol in ("apple", "llm-adapters"):
        return dict(pick_tasks(available, config.tasks, commonsense.TASK_ALIASES, commonsense.LLM_ADAPTERS_TASKS))
    if config.protocol == "lm-eval":
        names = [lmeval_tasks.TASK_ALIASES.get(t.lower(), t) for t in (config.tasks or ())]
        unknown = [t for t in names if t not in lmeval_tasks.LM_EVAL_TASKS]
        if unknown:
            raise DataError(
                f"unknown lm-eval task(s) {', '.join(unknown)}; built in: {', '.join(lmeval_tasks.LM_EVAL_TASKS)} "
                "(use --backend lm-eval for any other lm-eval task)"
            )
        if not config.data:
            return dict.fromkeys(names or lmeval_tasks.LM_EVAL_TASKS)
        return dict(pick_tasks(available, config.tasks, lmeval_tasks.TASK_ALIASES, tuple(lmeval_tasks.LM_EVAL_TASKS)))
    if config.tasks is None:
        return dict(available)
    return dict(pick_tasks(available, config.tasks, {}, ()))


def evaluate_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EvalConfig, spec: ModelSpec | None = None
) -> ModelResults:
    """Run every task of ``config`` on a loaded model.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        config: The run settings.
        spec: What the model is (for labels); default: its class name.

    Returns:
        The model's results, task by task.
    """
    spec = spec or ModelSpec(type(model).__name__)
    settings = settings_dict(config)
    if config.backend == "lm-eval":
        from elmtune.evaluation.lmeval_backend import run_lm_eval_backend

        tasks = run_lm_eval_backend(
            model,
            tokenizer,
            config.tasks or (),
            include_paths=config.data,
            limit=config.limit,
            batch_size=config.batch_size,
            add_bos=config.add_bos,
        )
        return ModelResults(spec.model, _adapter(spec), spec.label, tasks, settings)

    files = _task_files(config)
    scorer = LoglikelihoodScorer(
        model,
        tokenizer,
        batch_size=config.batch_size,
        add_bos=config.add_bos,
        layout=config.layout,
        progress=config.progress,
    )
    results: list[TaskResult] = []
    for task, path in files.items():
        logger.info("%s: %s protocol on %s", task, config.protocol, path or "the Hugging Face dataset")
        if config.protocol == "apple":
            results.append(run_apple(scorer, task, path, config))
        elif config.protocol == "llm-adapters":
            results.append(run_llm_adapters(model, tokenizer, task, path, config))
        elif config.protocol == "lm-eval":
            results.append(run_lm_eval_task(scorer, task, path, config))
        else:
            results.append(run_mc(scorer, task, path, config))
    return ModelResults(spec.model, _adapter(spec), spec.label, results, settings)


def _adapter(spec: ModelSpec) -> str | None:
    return None if spec.adapter is None else str(spec.adapter)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_eval(
    spec: ModelSpec,
    config: EvalConfig,
    *,
    compare: ModelSpec | None = None,
    output_dir: Path | None = None,
    overwrite: bool = False,
) -> EvalReport:
    """Evaluate a model (optionally against a second one) and write ``results.json``, ``results.md`` and examples.

    Args:
        spec: The model (and adapter) to evaluate.
        config: Protocol, data, tasks and scoring settings.
        compare: A second model evaluated with the same settings; the table shows both and their difference.
        output_dir: Where to write the outputs (absent or empty unless ``overwrite``); None writes nothing. It is
            checked before any model is loaded and replaced only once every output is written.
        overwrite: Replace an existing non-empty ``output_dir``.

    Returns:
        The report; ``report.markdown()`` is the table.

    Raises:
        OutputPathError: ``output_dir`` exists and is not empty (without ``overwrite``), is a file, or is not
            writable; raised before anything is loaded.
        OutputWriteError: The disk filled up while writing; nothing was left behind.
    """
    if output_dir is not None:
        check_output_dir(output_dir, overwrite=overwrite)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    model, tokenizer = load_for_eval(spec, dtype=config.dtype, device=config.device)
    meta = {
        "elmtune_version": __version__,
        "created": started.isoformat(timespec="seconds"),
        "protocol": config.protocol,
        "protocol_description": PROTOCOL_DESCRIPTIONS.get(
            "lm-eval-harness" if config.backend == "lm-eval" else config.protocol
        ),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    device = next(model.parameters()).device
    results = evaluate_model(model, tokenizer, config, spec)
    del model
    _free(device)
    baseline = None
    if compare is not None:
        model, tokenizer = load_for_eval(compare, dtype=config.dtype, device=config.device)
        baseline = evaluate_model(model, tokenizer, config, compare)
        del model
        _free(device)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    report = EvalReport(results, baseline, meta=meta)
    if output_dir is not None:
        report.write(output_dir, overwrite=overwrite)
    return report
