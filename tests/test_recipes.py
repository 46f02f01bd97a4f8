"""Every shipped recipe loads (train recipes against the run config, build recipes against the build recipe), and
Apple's recipes carry Apple's values."""

import dataclasses
from pathlib import Path

import pytest

from elmtune.build.recipe import is_build_recipe, load_build_recipe
from elmtune.finetune.config import load_run_config
from elmtune.recipe_yaml import read_config_file

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
BUILD_RECIPES = [p for p in RECIPES if is_build_recipe(read_config_file(p))]
TRAIN_RECIPES = [p for p in RECIPES if p not in BUILD_RECIPES]


def test_the_recipes_are_there():
    names = {p.name for p in RECIPES}
    for size in ("270M", "450M", "1_1B", "3B"):
        for method in ("lora", "dora"):
            assert f"openelm-{size}-{method}-commonsense.yaml" in names
        assert f"openelm-{size}-instruct-dpo.yaml" in names
    assert "tiny-lora-commonsense.yaml" in names
    builds = {p.name for p in BUILD_RECIPES}
    for name in ("build-commonsense-expert", "build-assistant", "openelm-270M-instruct-sft-dpo"):
        assert f"{name}.yaml" in builds
    assert {"build-commonsense-expert-tiny.yaml", "build-assistant-tiny.yaml", "tiny-sft-dpo.yaml"} <= builds


# Spec section 8: per-size epochs, learning rate and loss of OpenELM-Instruct's preference tuning.
INSTRUCT = {
    "270M": (5, 2e-5, "hinge"),
    "450M": (8, 3e-5, "hinge"),
    "1_1B": (5, 5e-5, "sigmoid"),
    "3B": (10, 1e-4, "hinge"),
}


@pytest.mark.parametrize("size", list(INSTRUCT))
def test_apple_instruct_values(size):
    c = load_run_config(Path(__file__).resolve().parents[1] / "recipes" / f"openelm-{size}-instruct-dpo.yaml")
    t = c.train
    assert (t.epochs, t.lr, t.preference_loss) == INSTRUCT[size]
    assert (t.objective, t.beta, t.warmup, t.batch_size, t.grad_accum, t.seed) == ("dpo", 0.01, 0.1, 8, 2, 42)
    assert (c.data.format, c.data.template, c.data.max_length, c.data.max_prompt_length) == (
        "preference",
        "chat",
        1024,
        512,
    )
    assert t.gradient_checkpointing and t.precision == "bf16" and t.schedule == "cosine"


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: p.stem)
def test_recipe_loads(recipe):
    config = load_run_config(recipe)
    assert config.model and config.data.path


@pytest.mark.parametrize(
    "recipe", [p for p in RECIPES if p.stem.endswith("-commonsense") and "tiny" not in p.stem], ids=lambda p: p.stem
)
def test_apple_commonsense_values(recipe):
    c = load_run_config(recipe)
    size, method = recipe.stem.split("-")[1:3]
    assert c.model == f"apple/OpenELM-{size}" and c.adapter.method == method
    assert (c.adapter.r, c.adapter.alpha, c.adapter.dropout, c.adapter.targets) == (32, 32.0, 0.1, ("apple",))
    t = c.train
    assert (t.batch_size, t.grad_accum, t.max_steps, t.lr, t.min_lr, t.schedule) == (8, 2, 4375, 3e-4, 3e-5, "cosine")
    assert (t.warmup, t.warmup_init_lr, t.betas, t.weight_decay, t.max_grad_norm) == (1000, 1e-6, (0.9, 0.95), 0, 1)
    assert (t.z_loss, t.precision, t.gradient_checkpointing) == (1e-4, "bf16", size != "270M")
    assert (c.data.max_length, c.data.train_on_prompt, c.data.format) == (2048, True, "commonsense")


def test_flags_override_yaml_and_unknown_keys_fail(tmp_path):
    recipe = TRAIN_RECIPES[0]
    c = load_run_config(recipe, {"train.lr": 1e-3, "adapter.r": 8, "data.path": "other.json"})
    assert (c.train.lr, c.adapter.r, c.data.path) == (1e-3, 8, "other.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("  grad_accum: 2", "  grad_acum: 2"))
    with pytest.raises(Exception, match="unknown train key.*grad_acum"):
        load_run_config(bad)


@pytest.mark.parametrize("recipe", BUILD_RECIPES, ids=lambda p: p.stem)
def test_build_recipe_loads(recipe):
    build = load_build_recipe(recipe)
    assert build.model and build.stages
    if "tiny" in recipe.stem:  # the tiny variants run offline anywhere, on the shipped samples
        assert build.model == "tiny"
        for stage in build.stages:
            if stage.kind in ("sft", "dpo"):
                assert Path(stage.settings.data.path).is_absolute() and Path(stage.settings.data.path).is_file()
                assert stage.settings.train.device == "cpu"
                assert stage.settings.train.max_steps <= (25 if recipe.stem == "quickstart-tiny" else 5)


def _stage(recipe: str, name: str):
    build = load_build_recipe(ROOT / "recipes" / f"{recipe}.yaml")
    return next(stage for stage in build.stages if stage.name == name)


def _same_run(stage_config, recipe_config):
    """The stage's run config and a train recipe's, apart from the run directory the build chooses."""
    train = dataclasses.replace(stage_config.train, output_dir=recipe_config.train.output_dir)
    return dataclasses.replace(stage_config, train=train) == recipe_config


def test_commonsense_expert_trains_with_apples_peft_recipe():
    sft = _stage("build-commonsense-expert", "sft")
    assert _same_run(sft.settings, load_run_config(ROOT / "recipes" / "openelm-270M-lora-commonsense.yaml"))
    for name in ("eval-base", "eval-tuned"):
        assert _stage("build-commonsense-expert", name).settings.protocol == "apple"
    assert _stage("build-commonsense-expert", "eval-tuned").adapter == "@sft"
    assert _stage("build-commonsense-expert", "export").model == "@merge"


def test_instruct_sft_dpo_has_apples_instruct_settings_for_the_dpo_stage():
    apple = load_run_config(ROOT / "recipes" / "openelm-270M-instruct-dpo.yaml")
    dpo = _stage("openelm-270M-instruct-sft-dpo", "dpo")
    assert dpo.adapter == "@sft" and dpo.model == apple.model
    assert dpo.settings.data == apple.data
    assert dataclasses.replace(dpo.settings.train, output_dir=apple.train.output_dir) == apple.train
    # the dpo stage continues the SFT adapter, whose settings are those of Apple's DPO recipe
    assert _stage("openelm-270M-instruct-sft-dpo", "sft").settings.adapter == apple.adapter


def test_assistant_continues_dpo_from_sft():
    assert _stage("build-assistant", "dpo").adapter == "@sft"
    assert _stage("build-assistant-tiny", "dpo").adapter == "@sft"
    assert _stage("tiny-sft-dpo", "dpo").adapter == "@sft"
