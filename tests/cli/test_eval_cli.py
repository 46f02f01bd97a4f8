"""``elmtune eval``: options map to one ``run_eval`` call; conflicting flags fail; a real run prints the table."""

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import elmtune.evaluation
import elmtune.progress
from elmtune.cli.app import app
from elmtune.errors import ConfigError, ElmtuneError

runner = CliRunner()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "commonsense"


class _Report:
    def markdown(self):
        return "| table |"


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_run_eval(spec, config, *, compare=None, output_dir=None, overwrite=False):
        seen.append(
            {"spec": spec, "config": config, "compare": compare, "output_dir": output_dir, "overwrite": overwrite}
        )
        return _Report()

    monkeypatch.setattr(elmtune.evaluation, "run_eval", fake_run_eval)
    return seen


def test_options_become_one_run_eval_call(calls, tmp_path):
    result = runner.invoke(
        app,
        [
            "eval",
            "270M",
            "--adapter",
            str(tmp_path),
            "--protocol",
            "llm-adapters",
            "--data",
            "a,b",
            "--data",
            "c",
            "--tasks",
            "boolq,piqa",
            "--limit",
            "50",
            "--batch-size",
            "8",
            "--no-add-bos",
            "--dtype",
            "bf16",
            "--device",
            "cpu",
            "--output",
            str(tmp_path / "out"),
            "--compare",
            "base",
            "--num-beams",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| table |" in result.output
    (call,) = calls
    spec, config = call["spec"], call["config"]
    assert (spec.model, spec.adapter) == ("270M", tmp_path)
    assert config.protocol == "llm-adapters" and config.data == ("a", "b", "c") and config.tasks == ("boolq", "piqa")
    assert config.limit == 50 and config.batch_size == 8 and config.add_bos is False
    assert (config.dtype, config.device, config.generation.num_beams) == ("bf16", "cpu", 4)
    assert (call["compare"].model, call["compare"].adapter) == ("270M", None)  # base = MODEL without the adapter
    assert call["output_dir"] == tmp_path / "out" and call["overwrite"] is False


def test_defaults_follow_apple(calls):
    result = runner.invoke(app, ["eval", "tiny", "--data", "dir"])
    assert result.exit_code == 0, result.output
    config = calls[0]["config"]
    assert config.protocol == "apple" and config.add_bos is True and config.batch_size == "auto"
    assert config.tasks is None and config.limit is None and calls[0]["compare"] is None
    assert calls[0]["overwrite"] is False


def test_overwrite_reaches_run_eval(calls, tmp_path):
    result = runner.invoke(app, ["eval", "tiny", "--data", "dir", "-o", str(tmp_path), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert calls[0]["output_dir"] == tmp_path and calls[0]["overwrite"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare-adapter", "x"], "--compare-adapter needs --compare"),
        (["--compare", "base"], "give --adapter"),
        (["--batch-size", "big"], "--batch-size must be"),
        (["--protocol", "mmlu"], "unknown protocol"),
    ],
)
def test_user_errors(calls, args, message):
    result = runner.invoke(app, ["eval", "tiny", "--data", "d", *args])
    assert result.exit_code != 0 and isinstance(result.exception, ElmtuneError)
    assert message in str(result.exception) and not calls


def test_progress_is_on_unless_no_progress_is_given(calls):
    assert runner.invoke(app, ["eval", "tiny", "--data", "d"]).exit_code == 0
    assert runner.invoke(app, ["eval", "tiny", "--data", "d", "--no-progress"]).exit_code == 0
    assert [call["config"].progress for call in calls] == [True, False]


def test_real_run_prints_the_table_and_writes_results(tmp_path, monkeypatch):
    monkeypatch.setattr(elmtune.progress, "MIN_GAP_S", 0.0)  # a progress line at each tenth, however fast
    result = runner.invoke(
        app,
        [
            "eval",
            "tiny",
            "--data",
            str(FIXTURES / "llm_adapters"),
            "--tasks",
            "boolq",
            "--limit",
            "2",
            "--device",
            "cpu",
            "--output",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| boolq | acc |" in result.output and "| boolq | acc_norm |" in result.output
    assert (tmp_path / "results.json").is_file() and (tmp_path / "examples" / "boolq.jsonl").is_file()
    progress = [line.split(",")[0] for line in result.stderr.splitlines() if line.startswith("eval boolq: ")]
    assert progress == ["eval boolq: 1/2 questions (50%)", "eval boolq: 2/2 questions (100%)"]  # stderr: not a tty


def test_config_file_settings_and_flags_on_top(calls, tmp_path):
    settings = tmp_path / "eval.yaml"
    settings.write_text(
        "protocol: llm-adapters\ndata: [a, b]\ntasks: boolq\nlimit: 20\nbatch_size: 4\n"
        "generation: {num_beams: 4, max_new_tokens: 16}\nseed: 7\n"
    )
    result = runner.invoke(app, ["eval", "tiny", "--config", str(settings), "--limit", "5", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    config = calls[0]["config"]
    assert (config.protocol, config.data, config.tasks, config.batch_size, config.seed) == (
        "llm-adapters",
        ("a", "b"),
        ("boolq",),
        4,
        7,
    )
    assert config.limit == 5  # the flag wins over the file
    assert (config.generation.num_beams, config.generation.max_new_tokens) == (4, 8)  # merged field by field
    assert config.add_bos is True and config.layout == "auto"  # neither file nor flag: the defaults


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("limt: 5\n", [], "{file}: unknown eval key(s) 'limt'; known: protocol, data, tasks, limit"),
        ("limit: many\n", [], "{file}: eval.limit must be int, got 'many' (flag --limit)"),
        ("generation: {beams: 4}\n", [], "{file}: unknown eval.generation key(s) 'beams'; known: num_beams"),
        ("limit: 5\n", ["--num-beams", "0"], "eval.generation: num_beams must be at least 1, not 0 (flag --num-beams)"),
    ],
    ids=["unknown key", "wrong type", "unknown nested key", "bad flag value"],
)
def test_config_file_errors_name_the_file_and_key(calls, tmp_path, text, args, message):
    settings = tmp_path / "eval.yaml"
    settings.write_text(text)
    result = runner.invoke(app, ["eval", "tiny", "--data", "d", "--config", str(settings), *args])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError) and not calls
    assert str(result.exception).startswith(message.format(file=settings))


def test_every_flag_sets_a_field_with_the_flags_default():
    """Flags left out fall back to EvalConfig's defaults, so each flag's default must be its field's default."""
    import typer

    from elmtune.cli.eval import COMMAND_OPTIONS
    from elmtune.cli.options import config_keys
    from elmtune.evaluation.config import EvalConfig

    command = typer.main.get_command(app).commands["eval"]
    defaults = {param.name: param.default for param in command.params}
    keys = config_keys(EvalConfig, defaults, {}, COMMAND_OPTIONS)
    assert set(defaults) - set(keys) == COMMAND_OPTIONS - {"ctx"}
    field_defaults = {
        spec.name: spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        for spec in dataclasses.fields(EvalConfig)
    }
    expected = {"data": (), "tasks": None}  # list flags: nothing given; the fields hold tuples
    for name, key in keys.items():
        top, *rest = key.split(".")
        value = field_defaults[top]
        for part in rest:
            value = getattr(value, part)
        assert expected.get(name, defaults[name]) == value, f"{name}: flag {defaults[name]!r}, {key} {value!r}"


def test_preference_flags_fill_the_preference_settings(calls, tmp_path):
    result = runner.invoke(
        app,
        [
            "eval",
            "tiny",
            "--adapter",
            str(tmp_path),
            "--protocol",
            "preference",
            "--data",
            "pairs.jsonl",
            "--beta",
            "0.25",
            "--format",
            "sharegpt_preference",
            "--split",
            "test_prefs",
            "--data-template",
            "chat",
            "--max-length",
            "1024",
            "--max-prompt-length",
            "256",
            "--skip-invalid",
        ],
    )
    assert result.exit_code == 0, result.output
    config = calls[0]["config"]
    assert config.protocol == "preference" and config.data == ("pairs.jsonl",)
    settings = config.preference
    assert (settings.beta, settings.data_format, settings.split, settings.data_template) == (
        0.25,
        "sharegpt_preference",
        "test_prefs",
        "chat",
    )
    assert (settings.max_length, settings.max_prompt_length, settings.skip_invalid) == (1024, 256, True)


def test_preference_defaults_are_a_dpo_runs(calls, tmp_path):
    """beta 0.1 (TRL's default); format, template and lengths as DataConfig's, which a DPO run uses."""
    from elmtune.datasets.config import DataConfig

    result = runner.invoke(app, ["eval", "tiny", "--adapter", str(tmp_path), "-p", "preference", "-d", "x.jsonl"])
    assert result.exit_code == 0, result.output
    settings = calls[0]["config"].preference
    data = DataConfig(path="x.jsonl")
    assert settings.beta == 0.1 and settings.skip_invalid is data.skip_invalid
    assert (settings.data_format, settings.data_template, settings.split) == (data.format, data.template, data.split)
    assert (settings.max_length, settings.max_prompt_length) == (data.max_length, data.max_prompt_length)


def test_bad_beta_names_the_flag(calls, tmp_path):
    result = runner.invoke(app, ["eval", "tiny", "-p", "preference", "-d", "x.jsonl", "--beta", "0"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError) and not calls
    assert str(result.exception) == "eval.preference.beta must be positive, got 0.0 (flag --beta)"


@pytest.fixture(scope="module")
def preference_checkpoints(make_tiny, trained_adapter, tmp_path_factory):
    root = tmp_path_factory.mktemp("preference-cli")
    make_tiny().save_pretrained(root / "base")
    adapter = trained_adapter(root / "base", root / "adapter", r=4, alpha=8, targets=("out_proj", "proj_2"))
    pairs = root / "pairs.jsonl"
    rows = [
        {"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green, mostly."},
        {"prompt": "Name a prime.", "chosen": "Seven.", "rejected": "Nine."},
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"},
    ]
    pairs.write_text("".join(f"{json.dumps(row)}\n" for row in rows))
    return root / "base", adapter, pairs


def test_real_preference_run_prints_the_labelled_table(preference_checkpoints, tmp_path):
    base, adapter, pairs = preference_checkpoints
    args = ["eval", str(base), "--adapter", str(adapter), "-p", "preference", "-d", str(pairs), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--batch-size", "2", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    header = f"| task | metric | {base} + adapter | {base} | Δ | n | protocol | shots | BOS |"
    assert header in result.output
    for metric in ("rewards/accuracies", "rewards/margins", "logps/accuracies", "logps/margins"):
        assert f"| pairs | {metric} |" in result.output
    reward_row = next(line for line in result.output.splitlines() if line.startswith("| pairs | rewards/margins |"))
    assert reward_row.endswith("| n/a | n/a | 2 | preference | 0 | yes |")
    assert "pairs: 2 pairs evaluated, 1 skipped (1 identical), 0 truncated" in result.output
    assert (tmp_path / "out" / "examples" / "pairs.jsonl").read_text().count("\n") == 2


def test_bad_preference_data_is_a_one_line_error(preference_checkpoints, tmp_path, monkeypatch, capsys):
    from elmtune.cli.app import main

    base, adapter, _ = preference_checkpoints
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "Hello"}\n')
    argv = ["elmtune", "eval", str(base), "--adapter", str(adapter), "-p", "preference", "-d", str(bad)]
    monkeypatch.setattr("sys.argv", [*argv, "--device", "cpu", "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {bad}, line 1: ") and "rejected" in error[0], stderr
    assert not (tmp_path / "out").exists()
