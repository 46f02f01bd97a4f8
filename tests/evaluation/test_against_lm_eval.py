"""Identical per-example predictions to lm-eval's Hugging Face backend (the reference), on local files.

Apple's protocol is checked against ``HFLM.loglikelihood`` called the way CoreNet calls it; the lm-eval protocol against
lm-eval's own task configs (``include:`` of the installed YAMLs, only the data source replaced by the local files),
run through ``--backend lm-eval`` (which this also tests).
"""

import os
from collections import namedtuple
from pathlib import Path

import pytest

from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.data import load_rows
from elmtune.evaluation.lmeval import lm_eval_model, run_lm_eval_backend, run_lm_eval_task
from elmtune.evaluation.protocols import apple_question
from elmtune.evaluation.report import predict
from elmtune.evaluation.scoring import LoglikelihoodScorer

lm_eval = pytest.importorskip("lm_eval")

Request = namedtuple("Request", "args")


@pytest.mark.parametrize("task", ["ARC-Challenge", "winogrande", "boolq"])
def test_apple_protocol_matches_lm_eval_loglikelihood(task, tiny_model, tokenizer, fixtures_dir):
    rows = load_rows(fixtures_dir / "llm_adapters" / task / "test.json", task)[:3]
    questions = [apple_question(row, task) for row in rows]
    ours = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=8, progress=False).score(questions)
    reference = lm_eval_model(tiny_model, tokenizer, batch_size=1, add_bos=True)
    for question, scores in zip(questions, ours, strict=True):
        results = reference.loglikelihood([Request(req) for req in question.requests], disable_tqdm=True)
        lls = [ll for ll, _ in results]
        assert [s.loglikelihood for s in scores] == pytest.approx(lls, abs=2e-4)
        assert [s.is_greedy for s in scores] == [greedy for _, greedy in results]
        # CoreNet: acc = argmax of the sums; acc_norm = argmax of sum / len("the correct answer is X").
        norm = [ll / len(cont) for ll, (_, cont) in zip(lls, question.requests, strict=True)]
        prediction = predict(question, scores)
        assert prediction.pred == max(range(len(lls)), key=lambda i: (lls[i], -i))
        assert prediction.pred_norm == max(range(len(norm)), key=lambda i: (norm[i], -i))


def _task_yaml(directory: Path, name: str, lm_eval_yaml: str, split: str, data: Path) -> None:
    root = Path(lm_eval.__file__).parent / "tasks"
    text = (
        f"include: {root / lm_eval_yaml}\n"
        f"task: {name}\n"
        "tag: null\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    {split}: {data}\n"
        "training_split: null\n"
        f"validation_split: {'validation' if split == 'validation' else 'null'}\n"
        f"test_split: {'test' if split == 'test' else 'null'}\n"
    )
    (directory / f"{name}.yaml").write_text(text)


LOCAL_TASKS = {  # our task -> (lm-eval YAML, split it evaluates)
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "winogrande": ("winogrande/default.yaml", "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
}
LIMIT = 4


@pytest.fixture(scope="module")
def lm_eval_run(make_tiny, tokenizer, fixtures_dir, tmp_path_factory):
    tiny_model = make_tiny()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    directory = tmp_path_factory.mktemp("lm_eval_tasks")
    for task, (yaml, split) in LOCAL_TASKS.items():
        _task_yaml(directory, f"local_{task}", yaml, split, fixtures_dir / "lm_eval" / f"{task}.jsonl")
    results = run_lm_eval_backend(
        tiny_model,
        tokenizer,
        [f"local_{t}" for t in LOCAL_TASKS],
        include_paths=[directory],
        limit=LIMIT,
        batch_size=4,
    )
    return {r.task.removeprefix("local_"): r for r in results}


@pytest.mark.parametrize("task", list(LOCAL_TASKS))
def test_lm_eval_protocol_gives_lm_eval_predictions(task, lm_eval_run, tiny_model, tokenizer, fixtures_dir):
    reference = lm_eval_run[task]
    assert reference.protocol == "lm-eval-harness" and reference.n == LIMIT
    config = EvalConfig(protocol="lm-eval", data=(str(fixtures_dir / "lm_eval"),), limit=LIMIT, progress=False)
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=3, progress=False)
    ours = run_lm_eval_task(scorer, task, fixtures_dir / "lm_eval" / f"{task}.jsonl", config)
    assert [m.metric for m in ours.metrics] == [m.metric for m in reference.metrics]
    samples = sorted(reference.examples, key=lambda s: s["doc_id"])
    for example, sample in zip(ours.examples, samples, strict=True):
        assert example["index"] == sample["doc_id"]
        lls = [resp[0][0] for resp in sample["resps"]]
        assert [c["loglikelihood"] for c in example["choices"]] == pytest.approx(lls, abs=2e-4)
        for metric in ours.metrics:
            assert example[metric.metric] == sample[metric.metric]
    for mine, theirs in zip(ours.metrics, reference.metrics, strict=True):
        assert mine.value == theirs.value and mine.stderr == pytest.approx(theirs.stderr)
