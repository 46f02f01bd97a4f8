"""Recipes and sample data ship inside the package: recipes are found by name, ``elmtune:PATH`` values name shipped
files, and ``elmtune recipes`` lists every recipe with one line."""

import json
from pathlib import Path

import pytest
import yaml

import elmtune
from elmtune.build.recipe import load_build_recipe
from elmtune.errors import ConfigError
from elmtune.finetune.config import load_run_config
from elmtune.recipe_yaml import read_config_file

PACKAGE = Path(elmtune.__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_recipes_folder_is_the_packaged_one():
    assert (ROOT / "recipes").resolve() == PACKAGE / "recipes"
    assert sorted(p.name for p in (PACKAGE / "recipes").glob("*.yaml"))  # not empty


def test_a_train_recipe_by_name_reads_the_shipped_file_with_samples_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere: nothing is relative to the working directory
    by_name = read_config_file("tiny-lora-commonsense")
    raw = yaml.safe_load((PACKAGE / "recipes" / "tiny-lora-commonsense.yaml").read_text(encoding="utf-8"))
    assert raw["data"]["path"] == "elmtune:samples/commonsense_train_sample200.json"
    assert by_name["data"]["path"] == str(PACKAGE / "samples" / "commonsense_train_sample200.json")
    assert by_name["adapter"] == raw["adapter"]  # everything else as written
    assert read_config_file("tiny-lora-commonsense.yaml") == by_name
    config = load_run_config("tiny-lora-commonsense")
    assert Path(config.data.path).is_file()


def test_a_build_recipe_by_name_resolves_every_stage_and_names_its_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_build_recipe("build-commonsense-expert-tiny")
    assert recipe.source == str(PACKAGE / "recipes" / "build-commonsense-expert-tiny.yaml")
    evals = [stage for stage in recipe.stages if stage.kind == "eval"]
    assert [list(stage.settings.data) for stage in evals] == [[str(PACKAGE / "samples" / "commonsense_eval")]] * 2


def test_a_local_file_wins_over_a_shipped_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tiny-lora-commonsense").write_text("model: mine\n", encoding="utf-8")
    assert read_config_file("tiny-lora-commonsense") == {"model": "mine"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: {path: 'elmtune:samples/nope.json'}\n", "elmtune:samples/nope.json is not a file shipped with elmtune"),
        ("data: {path: 'elmtune:../../etc/passwd'}\n", "is not a file shipped with elmtune"),
    ],
)
def test_an_unknown_shipped_path_is_one_error_naming_file_key_and_the_samples(tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        read_config_file(recipe)
    assert str(error.value).startswith(f"{recipe}: data: path: ")
    assert message in str(error.value) and "commonsense_train_sample200.json" in str(error.value)
    assert "\n" not in str(error.value)


def test_every_shipped_data_file_has_its_source_and_parses():
    samples = PACKAGE / "samples"
    source = (samples / "SOURCE.md").read_text(encoding="utf-8")
    for path in samples.iterdir():
        if path.name == "SOURCE.md":
            continue
        assert f"`{path.name}" in source, path.name
        for data in [path] if path.is_file() else sorted(path.rglob("*.json")):
            text = data.read_text(encoding="utf-8")
            rows = [json.loads(line) for line in text.splitlines()] if data.suffix == ".jsonl" else json.loads(text)
            assert len(rows) >= 20, data
