"""Running an evaluation: load the model(s), run every task of the chosen protocol, write the outputs.

What ``elmtune eval`` evaluates is a base model, base + adapter, a merged directory or any transformers causal LM. The
``preference`` protocol evaluates base + adapter and the base together, from one loaded model.
"""

from __future__ import annotations

import gc
import logging
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune import __version__
from elmtune.errors import ElmtuneError, UsageError
from elmtune.evaluation import lmeval, protocols
from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.data import DataError, pick_tasks, resolve_data
from elmtune.evaluation.generation import run_llm_adapters
from elmtune.evaluation.lmeval import run_lm_eval_backend, run_lm_eval_task
from elmtune.evaluation.preference import PreferenceSource, read_preference_sources, run_preference_task
from elmtune.evaluation.protocols import run_apple, run_mc
from elmtune.evaluation.report import PROTOCOL_DESCRIPTIONS, EvalReport, ModelResults, TaskResult, settings_dict
from elmtune.evaluation.run_report import write_eval_report
from elmtune.evaluation.scoring import LoglikelihoodScorer
from elmtune.models.finite import require_finite_parameters
from elmtune.output_paths import check_output_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What to evaluate.

    Attributes:
        model: A preset (``270M``, ``tiny``...), a hub id, or a local directory (a base, a merged checkpoint, or any
            transformers causal LM).
        adapter: A peft adapter directory to apply on top of ``model``.
        tokenizer: Tokenizer directory or hub id; default: the model directory's own tokenizer, else the bundled
            Llama-2 tokenizer.
    """

    model: str
    adapter: Path | None = None
    tokenizer: str | None = None

    @property
    def label(self) -> str:
        """A short name for tables: ``model`` or ``model + adapter``."""
        return self.model if self.adapter is None else f"{self.model} + {Path(self.adapter).name}"


def _attach_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """Apply a saved adapter (elmtune's or plain peft's) with elmtune's loader, frozen and in eval mode."""
    from elmtune.adapters import load_adapter

    return load_adapter(model, adapter)


def load_for_eval(
    spec: ModelSpec, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model (and adapter) for evaluation, in eval mode, with its tokenizer.

    Args:
        spec: Model, optional adapter and optional tokenizer.
        dtype: Weight dtype (``"bf16"``, ``"fp32"``, ...); None keeps the checkpoint's.
        device: Target device; None (or ``auto``) picks CUDA, then MPS, then the CPU.

    Returns:
        ``(model, tokenizer)``.
    """
    from elmtune.models import load_model, load_tokenizer
    from elmtune.models.device import resolve_device

    target = resolve_device(str(device) if device is not None else "auto")
    model = load_model(spec.model, dtype=dtype)
    if spec.adapter is not None:
        model = _attach_adapter(model, Path(spec.adapter))
    model = model.to(target).eval()
    require_finite_parameters(
        model, spec.label if spec.adapter is None else f"{spec.model} with adapter {spec.adapter}"
    )
    tokenizer = load_tokenizer(spec.tokenizer if spec.tokenizer is not None else spec.model)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ElmtuneError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab}; pass --tokenizer"
        )
    return model, tokenizer


def _task_files(config: EvalConfig) -> dict[str, Path | None]:
    """``{task: file}`` for the configured protocol (file None: read the Hub dataset)."""
    available = resolve_data(config.data)
    if config.protocol in ("apple", "llm-adapters"):
        return dict(pick_tasks(available, config.tasks, protocols.TASK_ALIASES, protocols.LLM_ADAPTERS_TASKS))
    if config.protocol == "lm-eval":
        names = [lmeval.TASK_ALIASES.get(t.lower(), t) for t in (config.tasks or ())]
        unknown = [t for t in names if t not in lmeval.LM_EVAL_TASKS]
        if unknown:
            raise DataError(
                f"unknown lm-eval task(s) {', '.join(unknown)}; built in: {', '.join(lmeval.LM_EVAL_TASKS)} "
                "(use --backend lm-eval for any other lm-eval task)"
            )
        if not config.data:
            return dict.fromkeys(names or lmeval.LM_EVAL_TASKS)
        return dict(pick_tasks(available, config.tasks, lmeval.TASK_ALIASES, tuple(lmeval.LM_EVAL_TASKS)))
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

    Raises:
        UsageError: The ``preference`` protocol, which scores two models: use :func:`evaluate_preference`.
    """
    if config.protocol == "preference":
        raise UsageError("the preference protocol scores base + adapter and the base: call evaluate_preference")
    spec = spec or ModelSpec(type(model).__name__)
    settings = settings_dict(config)
    if config.backend == "lm-eval":
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


def evaluate_preference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    spec: ModelSpec,
    sources: list[PreferenceSource] | None = None,
) -> tuple[ModelResults, ModelResults]:
    """Run the ``preference`` protocol on base + adapter, with the base (the adapter switched off) as the reference.

    Args:
        model: The peft model (base + adapter) in eval mode.
        tokenizer: Its tokenizer.
        config: The run settings.
        spec: What the model is; ``spec.adapter`` must be set.
        sources: The pairs, already read (:func:`~elmtune.evaluation.preference.read_preference_sources`); None
            reads ``config.data``.

    Returns:
        ``(tuned, base)`` results, task by task (see :mod:`elmtune.evaluation.preference`).
    """
    settings = settings_dict(config)
    tuned_tasks, base_tasks = [], []
    for source in sources if sources is not None else read_preference_sources(config):
        logger.info("%s: preference protocol on %s", source.task, source.source)
        tuned, base = run_preference_task(model, tokenizer, source, config)
        tuned_tasks.append(tuned)
        base_tasks.append(base)
    base_spec = ModelSpec(spec.model, tokenizer=spec.tokenizer)
    return (
        ModelResults(spec.model, _adapter(spec), spec.label, tuned_tasks, settings),
        ModelResults(base_spec.model, None, base_spec.label, base_tasks, settings),
    )


def _check_preference_models(spec: ModelSpec, compare: ModelSpec | None) -> None:
    """The preference protocol compares MODEL + adapter with MODEL: an adapter is needed, no other comparison."""
    if spec.adapter is None:
        raise UsageError(
            "--protocol preference scores MODEL + --adapter against MODEL itself as the reference; give --adapter"
        )
    if compare is not None and (compare.model != spec.model or compare.adapter is not None):
        raise UsageError("--protocol preference always compares with the base model; leave out --compare")


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
        compare: A second model evaluated with the same settings; the table shows both and their difference. The
            ``preference`` protocol always compares base + adapter with the base (``compare`` may only be the base).
        output_dir: Where to write the outputs (absent or empty unless ``overwrite``); None writes nothing. It is
            checked before any model is loaded and replaced only once every output is written.
        overwrite: Replace an existing non-empty ``output_dir``.

    Returns:
        The report; ``report.markdown()`` is the table.

    Raises:
        OutputPathError: ``output_dir`` exists and is not empty (without ``overwrite``), is a file, or is not
            writable; raised before anything is loaded.
        OutputWriteError: The disk filled up while writing; nothing was left behind.
        UsageError: The ``preference`` protocol without an adapter, or compared with another model than the base.
    """
    if config.protocol == "preference":
        _check_preference_models(spec, compare)
    if output_dir is not None:
        check_output_dir(output_dir, overwrite=overwrite)
    # the pairs are read before the model is loaded, so a bad data file fails at once
    sources = read_preference_sources(config) if config.protocol == "preference" else None
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
    baseline = None
    if config.protocol == "preference":
        results, baseline = evaluate_preference(model, tokenizer, config, spec, sources)
    else:
        results = evaluate_model(model, tokenizer, config, spec)
    del model
    _free(device)
    if compare is not None and config.protocol != "preference":
        model, tokenizer = load_for_eval(compare, dtype=config.dtype, device=config.device)
        baseline = evaluate_model(model, tokenizer, config, compare)
        del model
        _free(device)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    report = EvalReport(results, baseline, meta=meta)
    if output_dir is not None:
        report.write(output_dir, overwrite=overwrite)
        write_eval_report(Path(output_dir))  # after the results are published: they stay intact
    return report
