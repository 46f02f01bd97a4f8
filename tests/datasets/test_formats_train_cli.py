"""``elmtune train --objective dpo`` runs on each LLaMA-Factory and raw UltraFeedback layout, detected or declared."""

import json
import math

import pytest
from typer.testing import CliRunner

from elmtune.cli.app import app
from elmtune.finetune.run_log import read_metrics

ALPACA_PAIRS = [
    {"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "Loud."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "23"},
    {"instruction": "Say hello in French.", "chosen": "Bonjour.", "rejected": "Hello.", "system": "You translate."},
    {
        "instruction": "And in German?",
        "chosen": "Hallo.",
        "rejected": "Hola.",
        "history": [["Say hello in French.", "Bonjour."]],
    },
]


def _sources(data_dir, tmp_path):
    alpaca = tmp_path / "alpaca_pairs.json"
    alpaca.write_text(json.dumps(ALPACA_PAIRS), encoding="utf-8")
    return {
        "sharegpt_preference": (data_dir / "llamafactory_dpo_en_demo_first20.json", "auto"),
        "alpaca_preference": (alpaca, "alpaca_preference"),
        "ultrafeedback_raw": (data_dir / "ultrafeedback_raw_handmade.jsonl", "auto"),
    }


@pytest.mark.parametrize("data_format", ["sharegpt_preference", "alpaca_preference", "ultrafeedback_raw"])
def test_two_dpo_steps_on_each_format(data_format, data_dir, tmp_path):
    path, declared = _sources(data_dir, tmp_path)[data_format]
    out = tmp_path / "run"
    args = ["train", "-m", "tiny", "-d", str(path), "--format", declared, "-o", str(out), "--objective", "dpo"]
    args += ["--max-steps", "2", "--batch-size", "2", "--max-length", "96", "--max-prompt-length", "48"]
    args += ["--rank", "4", "--alpha", "8", "--lr", "1e-2", "--warmup", "0", "--log-every", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = " ".join(result.output.split())  # the console wraps long lines
    assert f"({data_format}): " in report  # the data report names the format it read
    if data_format == "ultrafeedback_raw":
        assert "4 preference rows skipped (1 with an empty prompt, 1 with no completion rated below the best" in report
        assert "3 completions left out (2 empty, 1 with every rating N/A); 4 training pairs" in report
    rows = [row for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference before the first update
    assert (out / "final" / "adapter_model.safetensors").is_file()
