"""Decoding settings and requests: checked once, errors naming the setting; the modules load no torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from elmtune.errors import ConfigError, UsageError
from elmtune.inference.request import GenerationRequest, ModelSource
from elmtune.inference.settings import DecodingSettings


def test_settings_and_request_modules_load_no_torch():
    code = (
        "import sys, elmtune.inference.settings, elmtune.inference.request; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_greedy_by_default_and_sampling_with_a_temperature():
    assert not DecodingSettings().sampling
    assert DecodingSettings(temperature=0.7, top_p=0.9, top_k=40, seed=3).sampling


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"max_new_tokens": 0}, "generation.max_new_tokens"),
        ({"temperature": -1.0}, "generation.temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "generation.top_p"),
        ({"temperature": 1.0, "top_k": -2}, "generation.top_k"),
        ({"repetition_penalty": 0.0}, "generation.repetition_penalty"),
        ({"top_p": 0.9}, "generation.top_p"),  # sampling knobs without sampling would be silently ignored
        ({"top_k": 5}, "generation.top_k"),
        ({"seed": 1}, "generation.seed"),
    ],
)
def test_invalid_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError) as err:
        DecodingSettings(**settings)
    assert err.value.key == key and str(err.value).startswith(key)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give either --prompt"),
        ({"prompt": "hi", "input": Path("a.jsonl"), "output": Path("b.jsonl")}, "give either --prompt"),
        ({"input": Path("a.jsonl")}, "go together"),
        ({"prompt": "hi", "raw": True, "system": "s"}, "--system needs the chat format"),
        ({"prompt": "hi", "batch_size": 0}, "--batch-size"),
    ],
)
def test_inconsistent_requests_are_usage_errors(fields, message):
    with pytest.raises(UsageError, match=message):
        GenerationRequest(ModelSource("tiny"), **fields)
