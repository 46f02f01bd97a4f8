"""The nine built-in lm-eval tasks build exactly the requests lm-eval builds from its own task configs."""

import json
import os
from pathlib import Path

import pytest

from elmtune.evaluation.lmeval import LM_EVAL_TASKS, lmeval_question

lm_eval = pytest.importorskip("lm_eval")

YAMLS = {  # task -> (lm-eval YAML, split it evaluates)
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "boolq": ("super_glue/boolq/default.yaml", "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "piqa": ("piqa/piqa.yaml", "validation"),
    "sciq": ("sciq/sciq.yaml", "test"),
    "winogrande": ("winogrande/default.yaml", "validation"),
    "social_iqa": ("siqa/siqa.yaml", "validation"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "test"),
}

HAND_ROWS = {  # tasks without a shipped fixture: rows in the Hub schema, with awkward whitespace on purpose
    "sciq": [
        {
            "support": "  Mesophiles grow best in moderate temperature. ",
            "question": "What do mesophiles prefer?",
            "distractor1": "cold",
            "distractor2": "heat",
            "distractor3": "acid",
            "correct_answer": "moderate",
        },
    ],
    "social_iqa": [
        {
            "context": "Tracy didn't go home.",
            "question": "What does Tracy need to do before this?",
            "answerA": "make a new plan",
            "answerB": "Go home",
            "answerC": "Find somewhere to go",
            "label": "3",
        },
    ],
}


def _rows(task, fixtures_dir, tmp_path):
    if task in HAND_ROWS:
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in HAND_ROWS[task]))
        return path
    return fixtures_dir / "lm_eval" / f"{task}.jsonl"


@pytest.fixture(scope="module")
def lm_eval_tasks(fixtures_dir, tmp_path_factory):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    directory = tmp_path_factory.mktemp("tasks")
    root = Path(lm_eval.__file__).parent / "tasks"
    paths = {}
    for task, (yaml, split) in YAMLS.items():
        paths[task] = _rows(task, fixtures_dir, directory)
        (directory / f"local_{task}.yaml").write_text(
            f"include: {root / yaml}\ntask: local_{task}\ntag: null\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {paths[task]}\ntraining_split: null\n"
            f"validation_split: {'validation' if split == 'validation' else 'null'}\n"
            f"test_split: {'test' if split == 'test' else 'null'}\n"
        )
    manager = TaskManager(include_path=str(directory), include_defaults=False)
    tasks = manager.load([f"local_{t}" for t in YAMLS])["tasks"]
    return {name.removeprefix("local_"): task for name, task in tasks.items()}, paths


@pytest.mark.parametrize("name", list(YAMLS))
def test_requests_gold_and_metrics_equal_lm_eval(name, lm_eval_tasks):
    tasks, paths = lm_eval_tasks
    reference = tasks[name]
    rows = [json.loads(line) for line in paths[name].read_text().splitlines()][:6]
    docs = list(reference.eval_docs)[:6]
    assert sorted(reference._metric_fn_list) == sorted(LM_EVAL_TASKS[name].metrics)
    for i, (row, doc) in enumerate(zip(rows, docs, strict=True)):
        question = lmeval_question(LM_EVAL_TASKS[name], row, i)
        context = reference.fewshot_context(doc, 0)
        instances = reference.construct_requests(doc, context)
        assert question.requests == tuple(tuple(inst.arguments) for inst in instances)
        gold = reference.doc_to_text(doc) if reference.multiple_input else reference.doc_to_target(doc)
        assert question.gold == gold
        choices = reference.doc_to_choice(doc)
        assert question.norm_lengths == tuple(len(c) for c in choices)  # lm-eval's acc_norm lengths
