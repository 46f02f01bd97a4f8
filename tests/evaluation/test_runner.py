"""End to end: base + adapter directory, merged directory, any causal LM; results JSON, examples, compare table."""

import copy
import json

import pytest
import torch

from elmtune.adapters import AdapterConfig, apply_adapter, fuse_split_modules, save_adapter
from elmtune.errors import ElmtuneError
from elmtune.evaluation import EvalConfig, LoglikelihoodScorer, ModelSpec, load_for_eval, run_eval
from elmtune.evaluation.data import load_rows
from elmtune.evaluation.protocols import apple_question, apple_subset

LIMIT = 3


@pytest.fixture(scope="module")
def checkpoints(make_tiny, tmp_path_factory):
    """A base directory, an adapter directory (non-zero B, so it changes outputs) and the in-memory adapted model."""
    tiny_model = make_tiny()
    root = tmp_path_factory.mktemp("ckpt")
    tiny_model.save_pretrained(root / "base")
    torch.manual_seed(3)
    adapted = apply_adapter(
        copy.deepcopy(tiny_model), AdapterConfig(r=4, alpha=8, dropout=0.0, targets=("attn", "mlp"))
    )
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    adapted.eval()
    save_adapter(adapted, root / "adapter")
    return root, adapted


def _apple_questions(fixtures_dir, task="ARC-Easy"):
    rows = apple_subset(load_rows(fixtures_dir / "llm_adapters" / task / "test.json", task), LIMIT)
    return [apple_question(row, task) for row in rows]


def _example_lls(task_result):
    return [c["loglikelihood"] for example in task_result.examples for c in example["choices"]]


def test_adapter_run_with_base_comparison_writes_labelled_results(checkpoints, tokenizer, fixtures_dir, tmp_path):
    root, adapted = checkpoints
    config = EvalConfig(
        data=(str(fixtures_dir / "llm_adapters"),), tasks=("ARC-Easy",), limit=LIMIT, batch_size=4, progress=False
    )
    report = run_eval(
        ModelSpec(str(root / "base"), adapter=root / "adapter"),
        config,
        compare=ModelSpec(str(root / "base")),
        output_dir=tmp_path,
    )
    questions = _apple_questions(fixtures_dir)
    with_adapter = LoglikelihoodScorer(adapted, tokenizer, batch_size=1, progress=False).score(questions)
    (task,) = report.results.tasks
    assert [q.index for q in questions] == [e["index"] for e in task.examples]  # Apple's seeded subset
    assert _example_lls(task) == pytest.approx([s.loglikelihood for row in with_adapter for s in row], abs=2e-4)
    base_lls = _example_lls(report.baseline.tasks[0])
    assert max(abs(a - b) for a, b in zip(base_lls, _example_lls(task), strict=True)) > 1e-2

    saved = json.loads((tmp_path / "results.json").read_text())
    acc = next(r for r in saved["results"] if r["metric"] == "acc")
    assert acc["protocol"] == "apple" and acc["bos"] is True and acc["shots"] == 0 and acc["n"] == LIMIT
    assert acc["adapter"] == str(root / "adapter") and len(acc["data"][0]["sha256"]) == 64
    assert {r["metric"] for r in saved["results"]} == {"acc", "acc_norm"}
    base_acc = next(r for r in saved["baseline"]["results"] if r["metric"] == "acc")
    diff = next(d for d in saved["difference"] if d["metric"] == "acc")
    assert diff["difference"] == pytest.approx(acc["value"] - base_acc["value"])
    lines = (tmp_path / "examples" / "ARC-Easy.jsonl").read_text().splitlines()
    assert len(lines) == LIMIT and json.loads(lines[0])["gold_label"].startswith("answer")
    assert (tmp_path / "baseline-examples" / "ARC-Easy.jsonl").is_file()
    table = report.markdown()
    assert "| Δ |" in table and "base + adapter" in table and "| ARC-Easy | acc_norm |" in table


def test_merged_directory_scores_like_the_unmerged_adapter(checkpoints, tokenizer, fixtures_dir, tmp_path):
    _, adapted = checkpoints
    merged_model = copy.deepcopy(adapted).merge_and_unload()  # peft's own merge
    fuse_split_modules(merged_model)  # Apple's fused keys again
    merged_model.save_pretrained(tmp_path / "merged")
    merged, merged_tokenizer = load_for_eval(ModelSpec(str(tmp_path / "merged")), device="cpu")
    questions = _apple_questions(fixtures_dir, "boolq")
    got = LoglikelihoodScorer(merged, merged_tokenizer, progress=False).score(questions)
    want = LoglikelihoodScorer(adapted, tokenizer, progress=False).score(questions)
    for a, b in zip(got, want, strict=True):
        assert [s.loglikelihood for s in a] == pytest.approx([s.loglikelihood for s in b], abs=1e-3)


def test_any_transformers_causal_lm_directory(fixtures_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    eval_config = EvalConfig(
        protocol="lm-eval",
        data=(str(fixtures_dir / "lm_eval"),),
        tasks=("piqa", "winogrande"),
        limit=2,
        progress=False,
    )
    report = run_eval(ModelSpec(str(tmp_path / "llama")), eval_config)
    assert [t.task for t in report.results.tasks] == ["piqa", "winogrande"]
    assert [m.metric for m in report.results.tasks[0].metrics] == ["acc", "acc_norm"]
    assert [m.metric for m in report.results.tasks[1].metrics] == ["acc"]  # lm-eval reports only acc there


def test_user_errors_are_one_line(fixtures_dir):
    with pytest.raises(ElmtuneError, match="needs --data"):
        EvalConfig(protocol="apple")
    with pytest.raises(ElmtuneError, match="unknown protocol"):
        EvalConfig(protocol="mmlu", data=("x",))
    with pytest.raises(ElmtuneError, match="no data file for task 'sciq'"):
        run_eval(
            ModelSpec("tiny"),
            EvalConfig(protocol="lm-eval", data=(str(fixtures_dir / "lm_eval"),), tasks=("sciq",), progress=False),
        )
