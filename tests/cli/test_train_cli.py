"""``elmtune train`` parses flags into the run config and calls the library once."""

import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from elmtune.adapters.config import AdapterConfig
from elmtune.cli.app import app, main
from elmtune.cli.options import config_keys
from elmtune.cli.train import COMMAND_OPTIONS, RENAMED
from elmtune.datasets.config import DataConfig
from elmtune.finetune.config import RunConfig, TrainConfig

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


def test_preference_flags_reach_the_run_config(monkeypatch, tmp_path):
    calls = []

    def fake_run_training(config, resume=None, overwrite=False):
        calls.append(config)
        return SimpleNamespace(
            final_adapter=Path("out/final"), steps=1, last_loss=0.69, already_finished=False, run_dir=Path("out")
        )

    monkeypatch.setattr("elmtune.finetune.run.run_training", fake_run_training)
    args = ["train", "--model", "tiny", "--data", "pairs.jsonl", "--objective", "dpo", "--adapter", "runs/sft/final"]
    args += ["--label-smoothing", "0.1", "--precompute-reference", "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ((config,),) = [calls]
    assert config.start_from == "runs/sft/final" and config.to_dict()["start_from"] == "runs/sft/final"
    assert config.train.label_smoothing == 0.1 and config.train.precompute_reference is True


COMMAND_FLAGS = {"--config", "--resume", "--resume-from", "--overwrite", "--num-processes"}
"""Flags of the command itself, not of the run config."""
RENAMED_FLAGS = {
    "--model": "model",
    "--data": "data.path",
    "--format": "data.format",
    "--rank": "adapter.r",
    "--adapter": "start_from",
}
"""Flags whose name is not the field they set."""
AMBIGUOUS_FIELDS = {"seed": "train.seed"}
"""Field names of several sections, and the one the flag of that name sets."""
FIELDS_WITHOUT_FLAGS = {
    "data.seed",  # the hold-out split's seed: --seed is the run's seed (train.seed); set data.seed in the recipe
    "train.betas",  # a pair of numbers: set it in the recipe
}


def _train_flags() -> dict[str, str]:
    """Long flag -> parameter name of ``elmtune train``, as the command line parser sees them."""
    command = typer.main.get_command(app).commands["train"]
    flags = {}
    for param in command.params:
        long_flags = [opt for opt in param.opts if opt.startswith("--")]
        if long_flags:
            flags[max(long_flags, key=len)] = param.name
    return flags


def test_every_config_field_has_a_flag_and_every_flag_a_field():
    sections = {"data": DataConfig, "adapter": AdapterConfig, "train": TrainConfig}
    keys_by_field: dict[str, list[str]] = {}
    for section, kind in sections.items():
        for spec in dataclasses.fields(kind):
            keys_by_field.setdefault(spec.name, []).append(f"{section}.{spec.name}")
    flags = _train_flags()
    expected = {}
    for flag, parameter in flags.items():
        if flag in COMMAND_FLAGS:
            continue
        field = flag[2:].replace("-", "_")
        if flag in RENAMED_FLAGS:
            expected[parameter] = RENAMED_FLAGS[flag]
        elif field in AMBIGUOUS_FIELDS:
            expected[parameter] = AMBIGUOUS_FIELDS[field]
        else:
            assert len(keys_by_field.get(field, [])) == 1, f"{flag} sets no config field (or several)"
            expected[parameter] = keys_by_field[field][0]
    top_level = {spec.name for spec in dataclasses.fields(RunConfig) if spec.name not in sections}
    all_keys = top_level | {key for keys in keys_by_field.values() for key in keys}
    flagless = all_keys - set(expected.values())
    assert flagless == FIELDS_WITHOUT_FLAGS, f"fields without a flag: {sorted(flagless - FIELDS_WITHOUT_FLAGS)}"
    assert config_keys(RunConfig, flags.values(), RENAMED, COMMAND_OPTIONS) == expected


def _bad_recipe(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("  grad_accum: 2", "  grad_acum: 2"))
    return bad


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "tiny"], 2, "error: data.path is required (flag --data)"),
        (
            ["--config", str(RECIPE), "--schedule", "sawtooth"],
            2,
            "error: train.schedule must be cosine, linear or constant, got 'sawtooth' (flag --schedule)",
        ),
        (
            ["--config", str(RECIPE), "--rank", "0"],
            2,
            "error: adapter.r must be a positive integer, got 0 (flag --rank)",
        ),
        (
            ["--config", "{tmp}/bad.yaml"],
            2,
            "error: {tmp}/bad.yaml: unknown train key(s) 'grad_acum'; known: output_dir, objective",
        ),
        (
            ["--config", "{tmp}/nope.yaml"],
            2,
            "error: recipe {tmp}/nope.yaml does not exist; give the path of a YAML file or the name of a shipped "
            "recipe (elmtune recipes)",
        ),
        (
            ["--config", str(RECIPE), "--label-smoothing", "0.7"],
            2,
            "error: train.label_smoothing must lie in [0, 0.5), got 0.7 (flag --label-smoothing)",
        ),
        (
            ["--config", str(RECIPE), "--objective", "dpo", "--preference-loss", "hinge", "--label-smoothing", "0.1"],
            2,
            "error: train.label_smoothing applies to the sigmoid (DPO) loss only, not 'hinge' (flag --label-smoothing)",
        ),
        (
            ["--config", str(RECIPE), "--precompute-reference"],
            2,
            "error: train.precompute_reference applies to --objective dpo only (SFT has no reference model) (flag "
            "--precompute-reference)",
        ),
        (
            ["--model", "tiny", "--data", "x.jsonl", "--adapter", "{tmp}/nope", "--device", "cpu"],
            1,
            "error: adapter directory {tmp}/nope does not exist",
        ),
        (
            ["--model", "tiny", "--data", "{tmp}/missing.jsonl", "--max-steps", "1", "--device", "cpu"],
            1,  # found while loading the data, not while reading the settings: a failure, not bad usage
            "error: {tmp}/missing.jsonl: no such file",
        ),
    ],
    ids=[
        "no data",
        "bad flag value",
        "bad flag value renamed",
        "bad yaml key",
        "missing recipe",
        "label smoothing range",
        "label smoothing loss",
        "precompute without dpo",
        "missing starting adapter",
        "missing data file",
    ],
)
def test_errors_are_one_line_naming_the_flag_key_or_file(args, code, message, tmp_path, monkeypatch, capsys):
    _bad_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    monkeypatch.setattr(sys, "argv", ["elmtune", "train", *args, "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    assert done.value.code == code, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, captured
    assert lines[0].startswith(message.replace("{tmp}", str(tmp_path))), lines[0]
    assert not (tmp_path / "out").exists()
