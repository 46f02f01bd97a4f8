"""``elmtune quickstart`` runs the whole job offline on the tiny preset: a report with charts, a checked merged model
and a summary whose numbers are the stages' own; running it again skips every stage; ``elmtune chat`` on the merged
model talks in OpenELM-Instruct's chat format."""

import json
import re
import time

import pytest
import torch
from transformers import AutoTokenizer
from typer.testing import CliRunner

from elmtune.cli.app import app
from elmtune.inference import ModelSource, load_for_generation
from elmtune.inference import chat as chat_module

runner = CliRunner()
STAGES = ("eval-base", "sft", "eval-tuned", "dpo", "merge", "samples")


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    result = runner.invoke(app, ["quickstart", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def _headline(path, task):
    rows = json.loads(path.read_text(encoding="utf-8"))["results"]
    return next(row["value"] for row in rows if row["task"] == task and row["metric"] == "acc")


@pytest.mark.slow
def test_quickstart_leaves_a_report_with_charts_and_a_checked_merged_model(quickstart):
    out, result = quickstart
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"0{i + 1}-{s}" for i, s in enumerate(STAGES)]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 1 and '<img src="report_' not in html
    assert (out / "report.md").read_text(encoding="utf-8").count(".png)") >= 1
    merged = out / "05-merge"
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    check = json.loads((merged / "merge_report.json").read_text(encoding="utf-8"))["verification"]
    assert check["passed"] is True
    # The summary on stdout: each task's base and tuned accuracy as the two evaluations wrote them.
    for task in ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Challenge", "ARC-Easy", "openbookqa"):
        base = _headline(out / "01-eval-base" / "results.json", task)
        tuned = _headline(out / "03-eval-tuned" / "results.json", task)
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {task} | acc |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert [float(cells[2]), float(cells[3])] == pytest.approx([base, tuned], abs=5e-5)
    assert re.search(r"\| merge \| passed \| \d\.\d\de-\d\d \| 100\.0% \|", result.stdout)
    replies = (out / "06-samples" / "replies.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(replies) == 2 and all(json.loads(r)["prompt"] in result.stdout for r in replies)
    assert f"chat with the merged model: elmtune chat {merged}" in result.stdout


@pytest.mark.slow
def test_quickstart_again_skips_every_stage_and_rewrites_nothing(quickstart):
    out, _ = quickstart

    def files():  # build.json is saved again (same content); every other file is left alone
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "build.json"}

    record = (out / "build.json").read_text(encoding="utf-8")
    before = files()
    start = time.perf_counter()
    again = runner.invoke(app, ["quickstart", "-o", str(out)])
    seconds = time.perf_counter() - start
    assert again.exit_code == 0, again.output
    skipped = [line for line in again.stderr.splitlines() if ": skip (" in line]
    assert len(skipped) == len(STAGES) and seconds < 120  # seconds on an idle machine; generous when shared
    assert files() == before and (out / "build.json").read_text(encoding="utf-8") == record


@pytest.mark.slow
def test_chat_with_the_merged_model_uses_openelm_instruct_format(quickstart, monkeypatch):
    out, _ = quickstart
    merged = out / "05-merge"
    seen = []
    real = chat_module.generate_reply

    def recording(model, tokenizer, prompt, settings, on_text=None):
        seen.append(prompt.render(tokenizer))
        return real(model, tokenizer, prompt, settings, on_text)

    monkeypatch.setattr(chat_module, "generate_reply", recording)
    result = runner.invoke(app, ["chat", str(merged), "--max-new-tokens", "6"], input="Hi!\n/exit\n")
    assert result.exit_code == 0, result.output
    text = "<|user|>\nHi!</s>\n<|assistant|>\n"  # OpenELM-Instruct's format, written out by hand
    assert seen == [text]
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    messages = [{"role": "user", "content": "Hi!"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == text
    # The printed reply: greedy decoding of that text by full forwards of the merged model.
    model, _ = load_for_generation(ModelSource(str(merged), device="cpu"))
    ids, new = tokenizer(text)["input_ids"], []
    with torch.no_grad():
        for _ in range(6):
            new.append(int(model(input_ids=torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax()))
            if new[-1] == tokenizer.eos_token_id:
                break
    assert f"assistant> {tokenizer.decode(new, skip_special_tokens=True)}\n" in result.stdout


def test_quickstart_refuses_a_directory_that_holds_something_else(tmp_path, run_main):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n", encoding="utf-8")
    code, line = run_main(["quickstart", "-o", str(out)])
    assert code == 1
    assert line == f"error: output directory {out} exists and is not empty; pass --overwrite to replace it"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
