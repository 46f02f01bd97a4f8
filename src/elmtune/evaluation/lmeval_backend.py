"""``--backend lm-eval``: any lm-eval task, run by lm-eval's own evaluator on an already loaded model (optional extra).

The model object (OpenELM, OpenELM + adapter, or any causal LM) is handed to lm-eval's Hugging Face backend, so the
whole catalogue of lm-eval tasks (few-shot, generation, groups) is available. Install with
``pip install "elmtune[lm-eval]"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.errors import ElmtuneError
from elmtune.evaluation.batching import BatchSize
from elmtune.evaluation.report import MetricValue, TaskResult
from elmtune.evaluation.scoring import model_max_length


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ElmtuneError('the lm-eval backend needs lm-eval: pip install "elmtune[lm-eval]"') from None


def lm_eval_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: BatchSize = 1,
    add_bos: bool | None = True,
) -> Any:
    """Wrap a loaded model and tokenizer in lm-eval's Hugging Face backend (``HFLM``).

    Args:
        model: A causal LM in eval mode (peft-wrapped models work too).
        tokenizer: Its tokenizer.
        batch_size: lm-eval's batch size (an integer or ``"auto"``).
        add_bos: lm-eval's ``add_bos_token`` (None: the tokenizer's default).

    Returns:
        An ``lm_eval.models.huggingface.HFLM``.
    """
    _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        backend="causal",
        batch_size=batch_size,
        max_length=model_max_length(model, tokenizer),
        add_bos_token=add_bos,
    )


def _metrics(task_results: dict[str, Any], n: int) -> list[MetricValue]:
    metrics = []
    for key, value in task_results.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name, filter_name = key.split(",", 1)
        stderr = task_results.get(f"{name}_stderr,{filter_name}")
        label = name if filter_name == "none" else f"{name} ({filter_name})"
        error = float(stderr) if isinstance(stderr, float) else float("nan")
        metrics.append(MetricValue(label, float(value), error, n))
    return metrics


def run_lm_eval_backend(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    *,
    include_paths: Sequence[str | Path] = (),
    limit: int | None = None,
    batch_size: BatchSize = 1,
    add_bos: bool | None = True,
    num_fewshot: int | None = None,
) -> list[TaskResult]:
    """Run lm-eval tasks through lm-eval's ``simple_evaluate`` on this model.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        tasks: lm-eval task (or group) names.
        include_paths: Directories of extra task YAMLs (e.g. local-file tasks with ``dataset_path: json``).
        limit: Documents per task (the first ones, as lm-eval does).
        batch_size: lm-eval's batch size.
        add_bos: lm-eval's ``add_bos_token``.
        num_fewshot: Few-shot examples; None keeps each task's default.

    Returns:
        One result per task lm-eval reports, labelled ``lm-eval-harness``, with lm-eval's per-sample logs.
    """
    _require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_paths]
    manager = None
    if paths:  # indexing lm-eval's own catalogue takes long: skip it when the include paths hold every task
        local = TaskManager(include_path=paths, include_defaults=False)
        manager = local if all(task in local.all_tasks for task in tasks) else None
    manager = manager or TaskManager(include_path=paths or None)
    start = time.perf_counter()
    output = simple_evaluate(
        model=lm_eval_model(model, tokenizer, batch_size=batch_size, add_bos=add_bos),
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=1000,
    )
    seconds = time.perf_counter() - start
    if output is None:
        raise ElmtuneError("lm-eval returned no results")
    results = []
    samples = output.get("samples", {})
    shots = output.get("n-shot", {})
    for task, task_results in output["results"].items():
        n = int(output.get("n-samples", {}).get(task, {}).get("effective", len(samples.get(task, []))))
        results.append(
            TaskResult(
                task=task,
                protocol="lm-eval-harness",
                metrics=_metrics(task_results, n),
                seconds=seconds,
                data=[{"lm_eval_task": task}],
                examples=list(samples.get(task, [])),
                shots=int(shots.get(task, 0) or 0),
                bos=add_bos,
            )
        )
    return results
