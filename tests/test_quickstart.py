"""The README starts with two commands, the install line and ``elmtune quickstart`` (run by
``tests/cli/test_quickstart_cli.py``), and every ``elmtune`` command line it shows parses: each command, flag and
argument exists."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from elmtune.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(text: str) -> list[list[str]]:
    """The lines of each ```bash block, continuation lines joined and comments dropped."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines = [line.split(" #", 1)[0].strip() for line in body.replace("\\\n", " ").splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def _elmtune_commands() -> list[list[str]]:
    commands = []
    for block in _blocks(README):
        for line in block:
            for part in line.split("&&"):
                words = shlex.split(part.split("|")[-1].strip())
                if words and words[0] == "elmtune":
                    commands.append(words[1:])
    return commands


def test_the_readme_starts_with_the_install_line_then_quickstart():
    start = README.split("## Start here", 1)[1].split("\n## ", 1)[0]
    first = _blocks(start)[0]
    assert len(first) == 2
    assert "pip install torch==" in first[0] and first[0].endswith("pip install -e .")
    assert first[1] == "elmtune quickstart"
    assert re.findall(r"^## (.+)$", README, re.M)[0] == "Start here"  # the first section
    assert "python -m pytest" in _blocks(start)[1][0]  # the test command comes next


@pytest.mark.parametrize("argv", _elmtune_commands(), ids=shlex.join)
def test_every_readme_command_line_parses(argv):
    group = typer.main.get_command(app)
    if argv in (["--help"], ["--version"]):
        return
    name, command, rest = group.resolve_command(group.context_class(group), argv)
    assert command is not None, f"no command {argv[0]}"
    if "--help" not in rest:
        command.make_context(f"elmtune {name}", list(rest))  # raises on an unknown flag or a missing argument
