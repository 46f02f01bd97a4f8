"""``elmtune recipes`` lists every shipped recipe with one line; a recipe that is neither a file nor shipped is one
error line."""

import sys
from pathlib import Path

import pytest

import elmtune

PACKAGE = Path(elmtune.__file__).resolve().parent


def test_recipes_command_lists_each_shipped_recipe_on_one_line(monkeypatch, capsys):
    from elmtune.cli.app import main

    monkeypatch.setattr(sys, "argv", ["elmtune", "recipes"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    lines = capsys.readouterr().out.splitlines()
    files = sorted((PACKAGE / "recipes").glob("*.yaml"))
    assert [line.split()[0] for line in lines] == [path.stem for path in files]
    for line, path in zip(lines, files, strict=True):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# ") and line.split(None, 1)[1] == first[2:].strip()
        assert len(first) <= 120, path.name


def test_a_missing_recipe_names_both_ways_to_give_one(tmp_path, run_main, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, line = run_main(["build", "no-such-recipe", "-o", str(tmp_path / "b")])
    assert code == 2
    assert line == (
        "error: build recipe no-such-recipe does not exist; give the path of a YAML file or the name of a shipped "
        "recipe (elmtune recipes)"
    )
