"""Recipe YAML is read as users write it: scientific notation without a dot is a number, a BOM and CRLF are fine."""

import yaml

from elmtune.adapters import AdapterConfig
from elmtune.finetune.config import load_run_config
from elmtune.recipe_yaml import load_recipe_yaml

RECIPE = """model: tiny
adapter:
  r: 4
  alpha: 8e0
data:
  path: data.json
train:
  lr: 1e-3
  min_lr: 5E-5
  weight_decay: .5e-1
  max_steps: 10
"""


def test_scientific_notation_bom_and_crlf_are_read_as_numbers(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + RECIPE.replace("\n", "\r\n").encode())
    assert yaml.safe_load(RECIPE)["train"]["lr"] == "1e-3"  # PyYAML's YAML 1.1 reading, which we do not follow
    config = load_run_config(path)
    assert (config.train.lr, config.train.min_lr, config.train.weight_decay) == (0.001, 5e-05, 0.05)
    assert config.train.max_steps == 10 and config.adapter.alpha == 8.0 and config.model == "tiny"


def test_quoted_numbers_stay_strings_and_plain_yaml_still_parses(tmp_path):
    path = tmp_path / "adapter.yaml"
    path.write_text("r: 8\nalpha: 1.6e1\ntargets: [q, v]\n")
    config = AdapterConfig.from_yaml(path)
    assert (config.r, config.alpha, config.targets) == (8, 16.0, ("q", "v"))
    quoted = tmp_path / "quoted.yaml"
    quoted.write_text("name: '1e-3'\nother: 1e\n")
    assert load_recipe_yaml(quoted) == {"name": "1e-3", "other": "1e"}
