"""The lm-eval bridge: lm-eval's zero-shot commonsense tasks rebuilt from its task configs, and ``--backend lm-eval``.

**Built-in tasks** (``--protocol lm-eval``). Each task reads the Hugging Face dataset lm-eval uses (online) or a local
JSON / JSON Lines file in the same schema. The prompt (``doc_to_text``), choices (``doc_to_choice``), target delimiter
(a space) and metrics follow lm-eval's YAML for the task; HellaSwag gets lm-eval's preprocessing and WinoGrande its
partial scoring (one context per option, the rest of the sentence as the shared continuation). The questions are
scored by elmtune's own scorer.

**lm-eval's evaluator** (``--backend lm-eval``, optional extra). The model object (OpenELM, OpenELM + adapter, or any
causal LM) is handed to lm-eval's Hugging Face backend, so the whole catalogue of lm-eval tasks (few-shot, generation,
groups) is available. Install with ``pip install "elmtune[lm-eval]"``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.errors import ElmtuneError
from elmtune.evaluation.config import BatchSize, EvalConfig
from elmtune.evaluation.data import DataError, Question, file_provenance, read_rows
from elmtune.evaluation.protocols import score_task
from elmtune.evaluation.report import MetricValue, TaskResult
from elmtune.evaluation.scoring import LoglikelihoodScorer, model_max_length

TARGET_DELIMITER = " "

Doc = dict[str, Any]


@dataclass(frozen=True)
class LmEvalTask:
    """One built-in lm-eval task.

    Attributes:
        name: lm-eval's task name.
        dataset: Hugging Face dataset id, config name and split that lm-eval evaluates.
        fields: Keys a row must have.
        metrics: The metrics lm-eval reports for the task.
        build: Row -> (contexts, continuations, gold). One context for all choices, or one per choice (partial
            scoring) with a single shared continuation.
    """

    name: str
    dataset: tuple[str, str | None, str]
    fields: tuple[str, ...]
    metrics: tuple[str, ...]
    build: Callable[[Doc], tuple[list[str], list[str], int]]


def _arc(doc: Doc) -> tuple[list[str], list[str], int]:
    choices = doc["choices"]
    return (
        [f"Question: {doc['question']}\nAnswer:"],
        list(choices["text"]),
        list(choices["label"]).index(doc["answerKey"]),
    )


def _boolq(doc: Doc) -> tuple[list[str], list[str], int]:
    return [f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"], ["no", "yes"], int(doc["label"])


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleaning: strip, ``" [title]"`` -> ``". "``, drop ``[...]`` markers, merge double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(doc: Doc) -> tuple[list[str], list[str], int]:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return [query], [hellaswag_preprocess(ending) for ending in doc["endings"]], int(doc["label"])


def _piqa(doc: Doc) -> tuple[list[str], list[str], int]:
    return [f"Question: {doc['goal']}\nAnswer:"], [doc["sol1"], doc["sol2"]], int(doc["label"])


def _sciq(doc: Doc) -> tuple[list[str], list[str], int]:
    choices = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    return [f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"], choices, 3


def _winogrande(doc: Doc) -> tuple[list[str], list[str], int]:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    return contexts, [sentence[blank + 1 :].strip()], {"1": 0, "2": 1}[str(doc["answer"])]


def _social_iqa(doc: Doc) -> tuple[list[str], list[str], int]:
    choices = [doc["answerA"], doc["answerB"], doc["answerC"]]
    return [f"Q: {doc['context']} {doc['question']}\nA:"], choices, int(doc["label"]) - 1


def _openbookqa(doc: Doc) -> tuple[list[str], list[str], int]:
    choices = doc["choices"]
    return [doc["question_stem"]], list(choices["text"]), list(choices["label"]).index(doc["answerKey"].lstrip())


_ACC_NORM = ("acc", "acc_norm")
_ARC_FIELDS = ("question", "choices", "answerKey")

LM_EVAL_TASKS: dict[str, LmEvalTask] = {
    task.name: task
    for task in (
        LmEvalTask("arc_easy", ("allenai/ai2_arc", "ARC-Easy", "test"), _ARC_FIELDS, _ACC_NORM, _arc),
        LmEvalTask("arc_challenge", ("allenai/ai2_arc", "ARC-Challenge", "test"), _ARC_FIELDS, _ACC_NORM, _arc),
        LmEvalTask(
            "boolq", ("aps/super_glue", "boolq", "validation"), ("passage", "question", "label"), ("acc",), _boolq
        ),
        LmEvalTask(
            "hellaswag",
            ("Rowan/hellaswag", None, "validation"),
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            _ACC_NORM,
            _hellaswag,
        ),
        LmEvalTask("piqa", ("baber/piqa", None, "validation"), ("goal", "sol1", "sol2", "label"), _ACC_NORM, _piqa),
        LmEvalTask(
            "sciq",
            ("allenai/sciq", None, "test"),
            ("support", "question", "distractor1", "distractor2", "distractor3", "correct_answer"),
            _ACC_NORM,
            _sciq,
        ),
        LmEvalTask(
            "winogrande",
            ("allenai/winogrande", "winogrande_xl", "validation"),
            ("sentence", "option1", "option2", "answer"),
            ("acc",),
            _winogrande,
        ),
        LmEvalTask(
            "social_iqa",
            ("lighteval/siqa", None, "validation"),
            ("context", "question", "answerA", "answerB", "answerC", "label"),
            ("acc",),
            _social_iqa,
        ),
        LmEvalTask(
            "openbookqa",
            ("allenai/openbookqa", "main", "test"),
            ("question_stem", "choices", "answerKey"),
            _ACC_NORM,
            _openbookqa,
        ),
    )
}
"""lm-eval task name -> definition."""

TASK_ALIASES: dict[str, str] = {
    **{name: name for name in LM_EVAL_TASKS},
    "arc-easy": "arc_easy",
    "arc-challenge": "arc_challenge",
    "social_i_qa": "social_iqa",
    "siqa": "social_iqa",
    "obqa": "openbookqa",
}
"""Lower-case names (lm-eval's and LLM-Adapters') -> lm-eval task name."""


def lmeval_question(task: LmEvalTask, doc: Doc, index: int) -> Question:
    """One row of a built-in task as a question, exactly as lm-eval builds its requests.

    Raises:
        DataError: The row lacks a field of the task's schema.
    """
    missing = [key for key in task.fields if key not in doc]
    if missing:
        raise DataError(
            f"{task.name} row {index + 1}: missing {', '.join(missing)}; rows must follow the schema of "
            f"{task.dataset[0]} (fields {', '.join(task.fields)})"
        )
    try:
        contexts, choices, gold = task.build(doc)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise DataError(
            f"{task.name} row {index + 1}: the answer or choices do not follow the schema of {task.dataset[0]} "
            f"({type(err).__name__}: {err}); fix or remove the row"
        ) from None
    if len(contexts) == 1:
        requests = tuple((contexts[0], TARGET_DELIMITER + choice) for choice in choices)
        labels = tuple(choices)
    else:
        requests = tuple((context, TARGET_DELIMITER + choices[0]) for context in contexts)
        labels = tuple(contexts)
    return Question(
        task=task.name,
        index=index,
        requests=requests,
        gold=gold,
        labels=labels,
        norm_lengths=tuple(len(label) for label in labels),
    )


def load_hub_rows(task: LmEvalTask, limit: int | None) -> tuple[list[Doc], str]:
    """The rows lm-eval evaluates, from the Hugging Face Hub (or its cache), and the dataset's fingerprint.

    Raises:
        DataError: The dataset cannot be loaded (e.g. offline and not cached).
    """
    import datasets

    path, name, split = task.dataset
    try:
        dataset = datasets.load_dataset(path, name, split=split)
    except Exception as error:  # noqa: BLE001 - every failure here means the same thing to the user
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"cannot load {path}{'/' + name if name else ''} ({split}) for {task.name}: {first}. Without network, "
            f"pass a local file in the same schema with --data {task.name}=FILE"
        ) from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dict(row) for row in dataset], getattr(dataset, "_fingerprint", "")


def run_lm_eval_task(scorer: LoglikelihoodScorer, task: str, path: Path | None, config: EvalConfig) -> TaskResult:
    """One built-in lm-eval task from a local file in the Hub schema, or from the Hub when ``path`` is None."""
    spec = LM_EVAL_TASKS[task]
    if path is None:
        rows, fingerprint = load_hub_rows(spec, config.limit)
        path_name, name, split = spec.dataset
        data = [{"dataset": f"{path_name}{'/' + name if name else ''}:{split}", "fingerprint": fingerprint}]
    else:
        rows = read_rows(path)[: config.limit]
        data = file_provenance(path)
    questions = [lmeval_question(spec, row, i) for i, row in enumerate(rows)]
    return score_task(scorer, questions, protocol="lm-eval", metrics=spec.metrics, data=data, bos=config.add_bos)


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
