"""``elmtune build`` on the tiny assistant recipe (SFT -> DPO -> merge -> eval -> GGUF -> replies), then again."""

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from elmtune.datasets import prepare_data
from elmtune.finetune.config import load_run_config
from elmtune.finetune.run_log import read_metrics
from elmtune.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "build-assistant-tiny.yaml"
STAGES = ["sft", "dpo", "merge", "eval", "export", "samples"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, elmtune):
    out = tmp_path_factory.mktemp("assistant") / "build"
    return out, elmtune("build", str(RECIPE), "-o", str(out))


def _record(build_dir: Path) -> dict:
    return {stage["name"]: stage for stage in json.loads((build_dir / "build.json").read_text())["stages"]}


def _lines(text: str, marker: str) -> list[str]:
    """Names of the stages whose progress line carries ``marker`` (``: start (``, ``: skip (``)."""
    return [line.split("] ")[1].split(" (")[0] for line in text.splitlines() if marker in line and "] " in line]


def _recipe_with(tmp_path: Path, stage: str, **settings) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    for entry in recipe["stages"]:
        if entry["name"] == stage:
            entry.update(settings)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(directory.rglob("*"))}


def test_every_stage_runs_once_and_leaves_a_complete_output(built):
    out, run = built
    assert run.code == 0, run.err
    assert _lines(run.out, ": start (") == STAGES and _lines(run.out, ": done in ") == STAGES
    record = _record(out)
    assert list(record) == STAGES and {stage["status"] for stage in record.values()} == {"done"}
    for stage, adapter in (("sft", "01-sft"), ("dpo", "02-dpo")):
        assert record[stage]["output"] == f"{adapter}/final"
        assert (out / adapter / "final" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "03-merge" / "config.json").read_text())["model_type"] == "openelm"
    assert (out / "03-merge" / "merge_report.json").is_file()
    results = json.loads((out / "04-eval" / "results.json").read_text())
    assert "ultrafeedback_binarized_sample" in json.dumps(results)
    gguf = out / "05-export" / "model.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert record["export"]["output_digest"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    replies = [json.loads(line) for line in (out / "06-samples" / "replies.jsonl").read_text().splitlines()]
    prompts = next(s for s in yaml.safe_load(RECIPE.read_text())["stages"] if s["name"] == "samples")["prompts"]
    assert [row["prompt"] for row in replies] == prompts and all(isinstance(row["reply"], str) for row in replies)
    assert all(stage["seconds"] > 0 and stage["started"] <= stage["finished"] for stage in record.values())


def _pair_log_probs(model, batch):
    """(2B,) summed log-probabilities of the target tokens of chosen then rejected: log-softmax, gather, mask."""
    sides = []
    for side in ("chosen", "rejected"):
        ids, mask, labels = (batch[f"{side}_{key}"] for key in ("input_ids", "attention_mask", "labels"))
        with torch.no_grad():
            log_probs = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)  # (B, L, V)
        targets = labels[:, 1:]  # (B, L-1): token t+1 is predicted at position t
        picked = log_probs[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        sides.append((picked * (targets != -100)).sum(-1))  # (B,)
    return torch.cat(sides)


def test_the_dpo_stage_starts_from_the_sft_adapter(built, monkeypatch):
    out, _ = built
    dpo, sft_final = out / "02-dpo", out / "01-sft" / "final"
    config = load_run_config(dpo / "config.yaml")
    assert Path(config.start_from).resolve() == sft_final.resolve()
    losses = [row["loss"] for row in read_metrics(dpo / "metrics.jsonl") if "loss" in row]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference (base + SFT) at the start
    # the reference log-probs the run cached are those of the base plus the SFT adapter, loaded by plain peft
    monkeypatch.chdir(ROOT)
    data = prepare_data(config.data, load_tokenizer())
    cached = load_file(str(dpo / "reference_logps.safetensors"))
    tuned = PeftModel.from_pretrained(load_model("tiny"), str(sft_final)).eval()
    expected = _pair_log_probs(tuned, data.collate(list(data.train)))
    assert torch.allclose(torch.cat([cached["chosen"], cached["rejected"]]), expected, atol=1e-4, rtol=1e-6)
    base = _pair_log_probs(load_model("tiny").eval(), data.collate(list(data.train)))
    assert (base - expected).abs().max() > 1e-2  # the SFT adapter does change the reference


def test_a_second_run_skips_every_stage(built, elmtune):
    out, _ = built
    record, files = _record(out), _snapshot(out)
    run = elmtune("build", str(RECIPE), "-o", str(out))
    assert run.code == 0, run.err
    assert _lines(run.out, ": skip (unchanged, output complete)") == STAGES
    assert _lines(run.out, ": start (") == []
    assert _record(out) == record  # same fingerprints, timings and digests: nothing ran
    files.pop(str(out / "build.json"))
    after = _snapshot(out)
    after.pop(str(out / "build.json"))
    assert after == files


def test_a_changed_setting_reruns_its_stage_and_the_stages_using_its_output(built, elmtune, tmp_path):
    out, _ = built
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    before = _record(copy)
    recipe = _recipe_with(tmp_path, "merge", probe_texts=["A different probe text for the merge check."])
    run = elmtune("build", str(recipe), "-o", str(copy))
    assert run.code == 0, run.err
    # eval uses the dpo adapter, not the merged model: it stays
    assert _lines(run.out, ": start (") == ["merge", "export", "samples"]
    assert _lines(run.out, ": skip (") == ["sft", "dpo", "eval"]
    assert "merge (merge): start (changed since the last build: settings.probe_texts)" in run.out
    after = _record(copy)
    assert after["merge"]["fingerprint"] != before["merge"]["fingerprint"]
    assert all(after[name] == before[name] for name in ("sft", "dpo", "eval"))


def test_from_reruns_that_stage_and_every_later_one(built, elmtune, tmp_path):
    out, _ = built
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    run = elmtune("build", str(RECIPE), "-o", str(copy), "--from", "export")
    assert run.code == 0, run.err
    assert _lines(run.out, ": start (--from export)") == ["export", "samples"]
    assert _lines(run.out, ": skip (") == ["sft", "dpo", "merge", "eval"]


def test_dry_run_prints_the_plan_and_writes_nothing(built, elmtune, tmp_path):
    out, _ = built
    files = _snapshot(out)
    recipe = _recipe_with(tmp_path, "dpo", train={**_dpo_train(), "beta": 0.2})
    run = elmtune("build", str(recipe), "-o", str(out), "--dry-run")
    assert run.code == 0, run.err
    plan = [line for line in run.out.splitlines() if line.startswith("[")]
    assert plan == [
        "[1/6] sft (sft): skip (unchanged, output complete)",
        "[2/6] dpo (dpo): run (changed since the last build: settings.train.beta)",
        "[3/6] merge (merge): run (uses the output of dpo, which runs again)",
        "[4/6] eval (eval): run (uses the output of dpo, which runs again)",
        "[5/6] export (export): run (uses the output of merge, which runs again)",
        "[6/6] samples (generate): run (uses the output of merge, which runs again)",
    ]
    assert _snapshot(out) == files
    fresh = tmp_path / "not-yet"
    run = elmtune("build", str(RECIPE), "-o", str(fresh), "--dry-run")
    assert run.code == 0 and run.out.count("): run (") == 6 and "[1/6] sft (sft): run (not built yet)" in run.out
    assert not fresh.exists()


def _dpo_train() -> dict:
    return next(s for s in yaml.safe_load(RECIPE.read_text())["stages"] if s["name"] == "dpo")["train"]


def test_a_directory_that_is_not_a_build_is_refused(elmtune, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    run = elmtune("build", str(RECIPE), "-o", str(tmp_path))
    assert run.code == 1 and "exists and is not empty; pass --overwrite" in run.err
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_overwrite_rebuilds_every_stage(built, elmtune):
    out, _ = built
    files = _snapshot(out)
    run = elmtune("build", str(RECIPE), "-o", str(out), "--dry-run", "--overwrite")
    assert run.code == 0, run.err
    assert "[1/6] sft (sft): run (not built yet)" in run.out and run.out.count("): run (") == 6
    assert _snapshot(out) == files
