"""``elmtune eval``: options map to one ``run_eval`` call; conflicting flags fail; a real run prints the table."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import elmtune.evaluation
from elmtune.cli.app import app
from elmtune.errors import ElmtuneError

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


def test_real_run_prints_the_table_and_writes_results(tmp_path):
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
