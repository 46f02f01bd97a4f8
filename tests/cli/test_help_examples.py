"""Every registered command's ``--help`` ends with copy-paste examples of that command, and the examples parse."""

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from elmtune.cli.app import app

runner = CliRunner()
COMMANDS = typer.main.get_command(app).commands  # name -> click command, as registered
BOX = re.compile(r"[╭╮╰╯│─]")


def _examples(help_text: str) -> list[str]:
    """The example command lines at the end of a help text (after its last 'Example:'/'Examples:' heading)."""
    tail = re.split(r"^\s*Examples?:\s*$", help_text, flags=re.M)
    assert len(tail) >= 2, "no 'Example:' heading on a line of its own"
    return [line.strip() for line in tail[-1].splitlines() if line.strip()]


def test_the_core_commands_are_registered():
    expected = {"inspect", "train", "eval", "export", "merge", "merge-adapters", "generate", "chat", "build", "report"}
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_ends_with_examples_of_the_command(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside an example line
    result = runner.invoke(app, [name, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    examples = _examples(result.output)
    assert 1 <= len(examples) <= 3, examples
    for line in examples:
        assert not BOX.search(line), f"the examples are not the end of the help: {line!r}"
        assert line.startswith(f"elmtune {name}"), line
        assert len(line) <= 110, f"example too long to copy from an 80-120 column terminal: {line!r}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_example_parses_as_a_command_line(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    examples = _examples(runner.invoke(app, [name, "--help"], terminal_width=400).output)
    command = COMMANDS[name]
    for line in examples:
        argv = shlex.split(line)[2:]
        command.make_context(name, argv)  # raises on an unknown option, a bad value or a missing argument
