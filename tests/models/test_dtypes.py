"""Dtype names: every accepted spelling resolves to the torch dtype it names; anything else is a one-line error."""

import pytest
import torch

from elmtune.models.dtypes import DTYPES, resolve_dtype

SPELLINGS = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "FP32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


@pytest.mark.parametrize(("name", "expected"), list(SPELLINGS.items()))
def test_every_spelling_resolves_to_its_dtype(name, expected):
    assert resolve_dtype(name) is expected


def test_auto_none_and_torch_dtypes_pass_through():
    assert resolve_dtype("auto") is None and resolve_dtype(None) is None
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16


def test_unknown_name_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown dtype 'int3'; use one of .*bf16.*half.* or auto"):
        resolve_dtype("int3")


def test_short_names_are_the_precision_names():
    # --precision and --base-dtype accept exactly these (finetune/config.py), so the training map is this one.
    assert DTYPES == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
