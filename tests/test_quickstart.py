"""The README's quickstart, run as written: every ``elmtune`` command of its code block, in order, offline."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[list[str]]:
    """The ``elmtune`` commands of the README's Quickstart code block (continuation lines joined)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("elmtune ")]


def test_quickstart_block_covers_the_whole_loop():
    verbs = [cmd[1] for cmd in quickstart_commands()]
    assert verbs == ["inspect", "inspect", "train", "eval", "merge", "export", "train"]


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path):
    for name in ("recipes", "tests"):  # the paths the README uses, relative to a clone's root
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    outputs = []
    for cmd in quickstart_commands():
        done = subprocess.run(
            [sys.executable, "-m", "elmtune.cli", *cmd[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{shlex.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        outputs.append(done.stdout + done.stderr)
        assert "deprecat" not in outputs[-1].lower(), f"{shlex.join(cmd)} printed a deprecation:\n{outputs[-1]}"
    runs = tmp_path / "runs"
    assert "271,527,168" in outputs[0]

    def losses(run: str) -> list[float]:
        rows = [json.loads(line) for line in (runs / run / "metrics.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    sft = losses("tiny-lora")
    assert sum(sft[-5:]) / 5 < sum(sft[:5]) / 5 - 1.0  # the SFT loss falls
    dpo = losses("tiny-dpo")
    assert dpo[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: the policy starts equal to its reference
    assert sum(dpo[-4:]) / 4 < dpo[0]
    results = json.loads((runs / "tiny-eval" / "results.json").read_text())
    assert "merge check passed" in outputs[4]
    report = json.loads((runs / "tiny-merged" / "merge_report.json").read_text())
    assert report["verification"]["max_abs_diff"] <= 1e-4
    assert (runs / "tiny.gguf").stat().st_size > 4_687_104  # f16 weights plus the vocabulary
    assert results  # written; its contents are covered by the evaluation tests
