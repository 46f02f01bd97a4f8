"""``base_quantization`` in ``elmtune_adapter.json``: parsed once into a typed record, malformed ones refused."""

from __future__ import annotations

import pytest
import torch

from elmtune.adapters.config import AdapterError
from elmtune.adapters.quantized_base import QuantizedBaseRecord

WRITTEN = {
    "kind": "nf4",
    "compute_dtype": "bfloat16",
    "block_size": 64,
    "double_quant": True,
    "weights": {
        "transformer.layers.0.attn.qkv_proj.weight": [[0, 48], [48, 64], [64, 80]],
        "transformer.layers.0.attn.out_proj.weight": [[0, 64]],
    },
}


def test_a_written_record_parses_to_its_kind_dtype_and_row_blocks_and_writes_back_unchanged():
    record = QuantizedBaseRecord.from_dict(WRITTEN)
    assert record.quantization.kind == "nf4" and record.quantization.compute_dtype == torch.bfloat16
    assert record.weights["transformer.layers.0.attn.qkv_proj.weight"] == ((0, 48), (48, 64), (64, 80))
    assert record.to_dict() == WRITTEN
    int8 = QuantizedBaseRecord.from_dict({"kind": "int8", "compute_dtype": "float32", "weights": {}})
    assert int8.to_dict()["block_size"] is None and int8.to_dict()["double_quant"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "fp4"}, "kind 'fp4' is not one of nf4, int8"),
        ({"compute_dtype": "float7"}, "base_quantization is malformed"),
        ({"weights": {"w": [[0]]}}, "base_quantization is malformed"),
        ({"weights": None}, "base_quantization is malformed"),
    ],
)
def test_a_malformed_record_is_one_error_naming_the_adapter(change, message):
    with pytest.raises(AdapterError, match=message) as error:
        QuantizedBaseRecord.from_dict({**WRITTEN, **change}, "runs/a/adapter")
    assert str(error.value).startswith("runs/a/adapter: ") and "\n" not in str(error.value)
