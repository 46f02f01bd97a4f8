"""Exit codes of every command (0 ok, 1 failed, 2 bad usage) and ``--debug``: the traceback, with the same exit code.

Each registered command has one cheap failing case here (a missing input: nothing is loaded), so a new command without
one fails :func:`test_every_command_has_a_failing_case`. ``tests/test_reliability.py`` holds the wider table of bad
inputs and their messages.
"""

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from elmtune.cli.app import app, main

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)

# command -> (argv with {w} for a scratch directory holding empty/, a/ and b/; exit code; words of the message)
FAILING: dict[str, tuple[str, int, str] | None] = {
    "inspect": ("inspect {w}/no-such-model", 1, "does not exist"),
    "train": ("train --model tiny --data {w}/none.jsonl -o {w}/out", 1, "none.jsonl"),
    "eval": ("eval tiny --data {w}/no-data -o {w}/out", 1, "no-data"),
    "export": ("export {w}/no-such-model --format gguf -o {w}/out.gguf", 1, "no-such-model"),
    "merge": ("merge tiny {w}/a -o {w}/out", 1, "a has no adapter_config.json"),
    "merge-adapters": ("merge-adapters {w}/a {w}/b -o {w}/out", 1, "adapter_config.json"),
    "generate": ("generate {w}/no-such-model --prompt hi", 1, "no-such-model"),
    "chat": ("chat {w}/no-such-model", 1, "no-such-model"),
    "build": ("build {w}/nope.yaml -o {w}/out", 2, "nope.yaml does not exist"),
    "push": ("push {w}/missing me/repo", 1, "missing is not a directory"),
    "report": ("report {w}/empty", 2, "empty is not a training run"),
    "quickstart": ("quickstart --model {w}/no-such-model -o {w}/quickstart", 1, "no-such-model"),
    "plan": ("plan --model tiny --device gpu:1", 2, "--device 'gpu:1'"),
    "recipes": None,  # takes no input that can be missing; its bad usage is tested below
}


@pytest.fixture
def workspace(tmp_path):
    for name in ("empty", "a", "b"):
        (tmp_path / name).mkdir()
    return tmp_path


def _argv(command: str, workspace) -> list[str]:
    return FAILING[command][0].format(w=workspace).split()


def test_every_command_has_a_failing_case():
    assert set(COMMANDS) <= set(FAILING), f"no case for {sorted(set(COMMANDS) - set(FAILING))}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if FAILING.get(c)])
def test_a_failure_is_one_line_and_its_exit_code(command, workspace, run_main):
    _, code, words = FAILING[command]
    exit_code, line = run_main(_argv(command, workspace))
    assert (exit_code, words in line) == (code, True), line


@pytest.mark.parametrize("command", [c for c in COMMANDS if FAILING.get(c)])
def test_debug_prints_the_traceback_and_keeps_the_exit_code(command, workspace, monkeypatch, capsys):
    _, code, words = FAILING[command]
    monkeypatch.setattr(sys, "argv", ["elmtune", "--debug", *_argv(command, workspace)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert "Traceback (most recent call last):" in err and 'File "' in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, last


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_flag_is_bad_usage(command):
    result = runner.invoke(app, [command, "--no-such-flag"])
    assert result.exit_code == 2 and "No such option" in result.output, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0(command):
    assert runner.invoke(app, [command, "--help"]).exit_code == 0


def test_debug_does_not_carry_over_to_the_next_invocation(workspace, monkeypatch, capsys, run_main):
    monkeypatch.setattr(sys, "argv", ["elmtune", "--debug", *_argv("inspect", workspace)])
    with pytest.raises(SystemExit):
        main()
    capsys.readouterr()
    assert run_main(_argv("inspect", workspace))[0] == 1  # run_main checks: one line, no traceback


def test_the_installed_command_prints_the_traceback_with_debug(workspace):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "elmtune.cli", "build", str(workspace / "nope.yaml"), "-o", str(workspace / "o")]
    plain = subprocess.run(command, capture_output=True, text=True, env=env)
    debug = subprocess.run([*command[:3], "--debug", *command[3:]], capture_output=True, text=True, env=env)
    assert plain.returncode == debug.returncode == 2  # bad usage stays 2 with --debug
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()
