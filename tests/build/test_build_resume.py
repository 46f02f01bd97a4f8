"""An interrupted ``elmtune build`` resumes at the stage it stopped in; the sft run continues from its checkpoint."""

import json
from pathlib import Path

from elmtune.finetune import loop
from elmtune.finetune.run_log import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "build-commonsense-expert-tiny.yaml"
STAGES = ["eval-base", "sft", "eval-tuned", "merge", "export"]


def _statuses(build_dir: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((build_dir / "build.json").read_text())["stages"]}


def _started(text: str) -> list[str]:
    return [line.split("] ")[1].split(" (")[0] for line in text.splitlines() if ": start (" in line]


def test_an_interrupted_build_resumes_where_it_stopped(elmtune, tmp_path, monkeypatch):
    real_step = loop.train_step

    def crash_after_the_first_checkpoint(session, *args, **kwargs):
        if session.state.step == 2:  # the recipe checkpoints every 2 steps of 3
            raise RuntimeError("simulated crash in step 3")
        return real_step(session, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", crash_after_the_first_checkpoint)
    out = tmp_path / "expert"
    first = elmtune("build", str(RECIPE), "-o", str(out))
    assert first.code == 1 and "simulated crash in step 3" in first.err
    assert _statuses(out) == {"eval-base": "done", "sft": "failed"}
    assert (out / "02-sft" / "checkpoints" / "step-00000002").is_dir() and not (out / "02-sft" / "final").exists()

    monkeypatch.setattr(loop, "train_step", real_step)
    second = elmtune("build", str(RECIPE), "-o", str(out))
    assert second.code == 0, second.err
    assert "[1/5] eval-base (eval): skip (unchanged, output complete)" in second.out
    assert "[2/5] sft (sft): resume (failed last time; resuming from its latest checkpoint)" in second.out
    assert _started(second.out) == ["eval-tuned", "merge", "export"]
    assert _statuses(out) == dict.fromkeys(STAGES, "done")
    steps = [row["step"] for row in read_metrics(out / "02-sft" / "metrics.jsonl") if "loss" in row]
    assert steps == [1, 2, 3]  # steps 1-2 from the first attempt, step 3 after the resume
    tuned = json.loads((out / "03-eval-tuned" / "results.json").read_text())
    assert "final" in json.dumps(tuned)  # evaluated with the sft stage's adapter
    assert (out / "01-eval-base" / "results.json").is_file()
    assert (out / "04-merge" / "merge_report.json").is_file()
    assert (out / "05-export" / "model.gguf").read_bytes()[:4] == b"GGUF"
