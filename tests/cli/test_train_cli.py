"""``elmtune train`` parses flags into the run config and calls the library once."""

from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from elmtune.cli.app import app

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "openelm-270M-lora-commonsense.yaml"


def test_flags_override_the_recipe_and_reach_run_training(monkeypatch):
    calls = []

    def fake_run_training(config, resume=None, overwrite=False):
        calls.append((config, resume))
        return SimpleNamespace(
            final_adapter=Path("out/final"), steps=3, last_loss=1.25, already_finished=False, run_dir=Path("out")
        )

    monkeypatch.setattr("elmtune.finetune.run.run_training", fake_run_training)
    args = [
        "train",
        "--config",
        str(RECIPE),
        "--data",
        "my.json",
        "--rank",
        "8",
        "--targets",
        "q,v",
        "--layers",
        "8-15",
        "--lr",
        "1e-4",
        "--warmup",
        "0.1",
        "--max-steps",
        "3",
        "--packing",
        "--resume",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ((config, resume),) = calls
    assert resume is True
    assert config.model == "apple/OpenELM-270M" and config.data.path == "my.json" and config.data.packing
    assert (
        config.adapter.r == 8 and config.adapter.targets == ("q", "v") and config.adapter.layers == tuple(range(8, 16))
    )
    assert config.adapter.alpha == 32.0 and config.train.lr == 1e-4 and config.train.warmup == 0.1
    assert config.train.max_steps == 3 and config.train.betas == (0.9, 0.95)  # untouched YAML values survive
    assert "last loss 1.2500" in result.output


def test_missing_data_and_bad_values_are_one_line_errors():
    from elmtune.cli.app import main  # noqa: F401  (main turns ElmtuneError into "error: ..." lines)

    result = CliRunner().invoke(app, ["train", "--model", "tiny"])
    assert result.exit_code != 0
    result = CliRunner().invoke(app, ["train", "--config", str(RECIPE), "--schedule", "sawtooth"])
    assert result.exit_code != 0 and "schedule" in str(result.exception)
