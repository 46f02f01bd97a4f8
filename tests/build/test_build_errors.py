"""A bad build recipe is one line naming the stage and the key, exit code 2, before anything is written."""

import copy
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPE = yaml.safe_load((ROOT / "recipes" / "build-assistant-tiny.yaml").read_text())


def _with(stage: str | None, **changes):
    recipe = copy.deepcopy(RECIPE)
    target = recipe if stage is None else next(s for s in recipe["stages"] if s["name"] == stage)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = {**target[key], **value}
        else:
            target[key] = value
    return recipe


CASES = {
    "unknown kind": (_with("sft", kind="finetune"), "stage 'sft': kind must be one of sft, dpo, eval"),
    "unknown key": (_with("merge", dtyp="bf16"), "stage 'merge' (merge): unknown merge key(s) 'dtyp'"),
    "invalid value": (_with("dpo", train={"beta": -1}), "stage 'dpo' (dpo): train.beta must be positive"),
    "later stage": (
        _with("dpo", start_from="@merge"),
        "stage 'dpo' (dpo), key start_from: '@merge' refers to this or a later stage",
    ),
    "unknown stage": (
        _with("merge", adapter="@dpp"),
        "stage 'merge' (merge), key adapter: '@dpp' names no stage; the stages before it are sft, dpo",
    ),
    "export of an adapter": (
        _with("export", model="@dpo"),
        "stage 'export' (export), key model: '@dpo' is an adapter (the output of an sft or dpo stage), but model "
        "takes a model directory (the output of a merge stage)",
    ),
    "duplicate name": (_with("eval", name="merge"), "stage 'merge', key name: duplicate stage name"),
    "output_dir": (_with("sft", train={"output_dir": "x"}), "stage 'sft' (sft): train.output_dir is set by the build"),
    "unknown top-level key": (_with(None, steps=[]), "unknown build recipe key(s) 'steps'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_recipe_is_one_line_and_nothing_is_written(case, elmtune, tmp_path):
    recipe, expected = CASES[case]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "build"
    run = elmtune("build", str(path), "-o", str(out))
    assert run.code == 2
    assert run.err.startswith(f"error: {path}: ") and run.err.count("\n") == 1
    assert expected in run.err
    assert not out.exists() and run.out == ""


def test_from_names_a_stage_of_the_recipe(elmtune, tmp_path):
    out = tmp_path / "build"
    run = elmtune("build", str(ROOT / "recipes" / "build-assistant-tiny.yaml"), "-o", str(out), "--from", "dpp")
    assert run.code == 2 and run.err == (
        "error: --from dpp: no stage of that name; the stages are sft, dpo, merge, eval, export, samples\n"
    )
    assert not out.exists()


def test_a_missing_tracker_package_stops_the_build_before_its_first_stage(elmtune, tmp_path, monkeypatch):
    import elmtune.finetune.trackers as trackers

    monkeypatch.setattr(trackers, "package_installed", lambda module: module != "wandb")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_with("dpo", train={"report_to": ["wandb"]}), sort_keys=False))
    out = tmp_path / "build"
    run = elmtune("build", str(path), "-o", str(out))
    assert run.code == 2 and run.err.count("\n") == 1
    assert run.err.startswith("error: train.report_to wandb: not installed; run pip install 'elmtune[trackers]'")
    assert not out.exists()


@pytest.mark.parametrize("stage", [None, "merge"])
def test_a_missing_model_stops_the_build_before_its_first_stage_starts(stage, elmtune, tmp_path):
    path = tmp_path / "recipe.yaml"
    missing = tmp_path / "no-such-model"
    path.write_text(yaml.safe_dump(_with(stage, model=str(missing)), sort_keys=False))
    out = tmp_path / "build"
    run = elmtune("build", str(path), "-o", str(out))
    assert run.code == 1 and run.err.count("\n") == 1 and "[1/" not in run.err + run.out
    assert run.err.startswith(f"error: model '{missing}' does not exist: it is not a local directory")
    assert not out.exists()
    quick = elmtune("quickstart", "--model", str(missing), "-o", str(out))
    assert quick.code == 1 and quick.err.count("\n") == 1 and "[1/" not in quick.err + quick.out
    assert not out.exists()


def test_trackers_are_not_part_of_a_training_stage_fingerprint():
    from elmtune.build.fingerprint import covered_values
    from elmtune.build.recipe import parse_build_recipe

    def sft_stage(train):
        recipe = {"model": "tiny", "stages": [{"name": "sft", "kind": "sft", "data": {"path": "x"}, "train": train}]}
        return parse_build_recipe(recipe).stages[0]

    plain = covered_values(sft_stage({"lr": 0.1}), "tiny", {})
    assert covered_values(sft_stage({"lr": 0.1, "report_to": ["tensorboard"]}), "tiny", {}) == plain
    assert covered_values(sft_stage({"lr": 0.2}), "tiny", {})["settings"] != plain["settings"]
    assert "report_to" not in plain["settings"]["train"] and plain["settings"]["train"]["lr"] == 0.1


def test_a_fingerprint_names_shipped_samples_the_same_in_every_installation(tmp_path, monkeypatch):
    import shutil

    import elmtune.shipped_files as shipped
    from elmtune.build.fingerprint import covered_values, fingerprint_of
    from elmtune.build.recipe import load_build_recipe

    def fingerprints():
        recipe = load_build_recipe("build-assistant-tiny")
        return [fingerprint_of(covered_values(stage, recipe.model, {})) for stage in recipe.stages]

    here = fingerprints()
    recipe = load_build_recipe("build-assistant-tiny")
    text = json.dumps([covered_values(stage, recipe.model, {}) for stage in recipe.stages])
    assert str(shipped.PACKAGE_DIR) not in text and "elmtune:samples/" in text
    # another installation: the same package files at another path
    other = tmp_path / "site-packages" / "elmtune"
    shutil.copytree(shipped.SAMPLES_DIR, other / "samples")
    shutil.copytree(shipped.RECIPES_DIR, other / "recipes")
    monkeypatch.setattr(shipped, "PACKAGE_DIR", other)
    monkeypatch.setattr(shipped, "SAMPLES_DIR", other / "samples")
    monkeypatch.setattr(shipped, "RECIPES_DIR", other / "recipes")
    assert str(other) in json.dumps(load_build_recipe("build-assistant-tiny").stages[0].settings_dict(), default=str)
    assert fingerprints() == here
