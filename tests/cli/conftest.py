"""CLI fixtures."""

import pytest

from elmtune.models import OpenELMConfig


@pytest.fixture
def tiny_config_dir(tmp_path):
    OpenELMConfig.from_preset("tiny").save_pretrained(tmp_path)
    return tmp_path
