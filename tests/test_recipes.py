"""Every shipped recipe loads against the run config, and Apple's recipes carry Apple's values."""

from pathlib import Path

import pytest

from elmtune.finetune.config import load_run_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_the_recipes_are_there():
    names = {p.name for p in RECIPES}
    for size in ("270M", "450M", "1_1B", "3B"):
        for method in ("lora", "dora"):
            assert f"openelm-{size}-{method}-commonsense.yaml" in names
        assert f"openelm-{size}-instruct-dpo.yaml" in names
    assert "tiny-lora-commonsense.yaml" in names


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


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
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
    recipe = RECIPES[0]
    c = load_run_config(recipe, {"train.lr": 1e-3, "adapter.r": 8, "data.path": "other.json"})
    assert (c.train.lr, c.adapter.r, c.data.path) == (1e-3, 8, "other.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("  grad_accum: 2", "  grad_acum: 2"))
    with pytest.raises(Exception, match="unknown train key.*grad_acum"):
        load_run_config(bad)
