"""Recipe YAML is read as users write it: scientific notation without a dot is a number, a BOM and CRLF are fine."""

import pytest
import yaml

from elmtune.adapters import AdapterConfig
from elmtune.errors import ConfigError
from elmtune.finetune.config import load_run_config
from elmtune.recipe_yaml import load_recipe_yaml, read_config_file

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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "config file {path} is a directory, not a file"),
        ("a: [1,\n", "{path} is not valid YAML: "),
        ("- 1\n- 2\n", "{path} must hold a mapping of settings (key: value lines), got a list"),
        (b"a: \xff\n", "{path} is not UTF-8 text: byte 0xff at offset 3"),
    ],
    ids=["directory", "invalid yaml", "not a mapping", "not utf-8"],
)
def test_unreadable_config_files_are_one_line_config_errors(tmp_path, content, message):
    path = tmp_path / "settings.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        read_config_file(path)
    assert str(err.value).startswith(message.format(path=path)) and "\n" not in str(err.value)
    assert read_config_file(_empty(tmp_path)) == {}


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    return path
