"""A build's summary reads what each stage wrote: base vs tuned pairs (an adapter's evaluation against the latest
evaluation of the same model, protocol, data and tasks without one), the last training metrics, the merge check and
the replies. The build directory here is written by hand, so every expected value is known."""

import json

from elmtune.build.record import BuildRecord, StageRecord
from elmtune.build.summary import summarize_build
from elmtune.build.summary_report import SCORES_CHART, summary_blocks
from elmtune.report_html import Image, Table


def _results(directory, rows, *, adapter=None, tasks=("boolq", "piqa"), baseline=None):
    directory.mkdir(parents=True)
    payload = {
        "model": {"name": "tiny", "adapter": adapter},
        "settings": {"protocol": "apple", "data": ["d"], "tasks": list(tasks), "limit": 4},
        "results": [{"task": t, "metric": m, "value": v} for t, m, v in rows],
    }
    if baseline is not None:
        payload["baseline"] = {"results": [{"task": t, "metric": m, "value": v} for t, m, v in baseline]}
    (directory / "results.json").write_text(json.dumps(payload), encoding="utf-8")


def _stage(name, kind, output, status="done"):
    return StageRecord(name=name, kind=kind, fingerprint="f", covered={}, status=status, output=output)


def _build(tmp_path):
    _results(tmp_path / "01-base", [("boolq", "acc", 0.5), ("boolq", "acc_norm", 0.4), ("piqa", "acc", 0.25)])
    _results(tmp_path / "02-other", [("boolq", "acc", 0.9)], tasks=("boolq",))  # other tasks: not the base
    run = tmp_path / "03-sft"
    (run / "final").mkdir(parents=True)
    rows = [
        {"step": 1, "loss": 3.0, "lr": 0.1},
        {"step": 2, "eval_loss": 2.9},  # a validation row: not a training row
        {"step": 2, "loss": 2.5, "rewards/accuracies": 0.75, "rewards/margins": 1.5, "lr": 0.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _results(tmp_path / "04-tuned", [("boolq", "acc", 0.75), ("piqa", "acc", 0.5)], adapter="03-sft/final")
    _results(
        tmp_path / "05-pairs",
        [("uf", "rewards/accuracies", 1.0), ("uf", "logps/accuracies", 0.75)],
        adapter="a",
        baseline=[("uf", "logps/accuracies", 0.25)],
    )
    (tmp_path / "06-merge").mkdir()
    check = {"verification": {"passed": True, "max_abs_diff": 3e-6, "top1_agreement": 1.0}}
    (tmp_path / "06-merge" / "merge_report.json").write_text(json.dumps(check), encoding="utf-8")
    (tmp_path / "07-samples").mkdir()
    replies = [{"prompt": "p1", "reply": "r1"}, {"prompt": "p2", "reply": "r2"}]
    (tmp_path / "07-samples" / "replies.jsonl").write_text("\n".join(json.dumps(r) for r in replies) + "\n")
    stages = [
        _stage("base", "eval", "01-base"),
        _stage("other", "eval", "02-other"),
        _stage("sft", "sft", "03-sft/final"),
        _stage("tuned", "eval", "04-tuned"),
        _stage("pairs", "eval", "05-pairs"),
        _stage("merge", "merge", "06-merge"),
        _stage("samples", "generate", "07-samples/replies.jsonl"),
        _stage("later", "eval", "08-later", status="running"),
    ]
    BuildRecord(recipe="r.yaml", model="tiny", stages={s.name: s for s in stages}).save(tmp_path)
    return tmp_path


def test_summary_pairs_tuned_with_base_and_reads_each_stage(tmp_path):
    summary = summarize_build(_build(tmp_path))
    scores = [(c.task, c.metric, c.base, c.tuned, c.base_stage, c.tuned_stage) for c in summary.scores]
    assert scores == [
        ("boolq", "acc", 0.5, 0.75, "base", "tuned"),
        ("piqa", "acc", 0.25, 0.5, "base", "tuned"),
        ("uf", "logps/accuracies", 0.25, 0.75, "pairs", "pairs"),  # the first metric the base has too
    ]
    [training] = summary.trainings
    assert (training.stage, training.steps) == ("sft", 2)
    assert training.metrics == {"loss": 2.5, "rewards/accuracies": 0.75, "rewards/margins": 1.5}
    [merge] = summary.merges
    assert (merge.passed, merge.max_abs_diff, merge.top1_agreement) == (True, 3e-6, 1.0)
    assert [(s.prompt, s.reply) for s in summary.samples] == [("p1", "r1"), ("p2", "r2")]
    assert summary.outputs[-1] == ("later", "08-later", "running")


def test_an_adapter_evaluation_without_a_matching_base_has_no_base_value(tmp_path):
    _results(tmp_path / "01-base", [("boolq", "acc", 0.5)], tasks=("boolq",))
    _results(tmp_path / "02-tuned", [("piqa", "acc", 0.5)], adapter="x", tasks=("piqa",))
    stages = [_stage("base", "eval", "01-base"), _stage("tuned", "eval", "02-tuned")]
    BuildRecord(recipe=None, model="tiny", stages={s.name: s for s in stages}).save(tmp_path)
    [change] = summarize_build(tmp_path).scores
    assert (change.base, change.tuned, change.base_stage) == (None, 0.5, None)


def test_summary_blocks_show_the_pairs_chart_and_full_paths_on_request(tmp_path):
    summary = summarize_build(_build(tmp_path))
    blocks = summary_blocks(summary, chart_dir=tmp_path)
    assert Image(SCORES_CHART, "base vs tuned, per task") in blocks
    assert (tmp_path / SCORES_CHART).read_bytes().startswith(b"\x89PNG")
    tables = [block for block in blocks if isinstance(block, Table)]
    assert tables[0].rows[0] == ("boolq", "acc", "0.5", "0.75", "0.25", "base → tuned")
    assert ("merge", "passed", "3.00e-06", "100.0%") in tables[2].rows
    outputs = tables[-1].rows
    assert outputs[0] == ("base", "01-base", "done")
    full = [b for b in summary_blocks(summary, full_paths=True) if isinstance(b, Table)][-1].rows
    assert full[0] == ("base", str(tmp_path / "01-base"), "done")
