"""Data loading, prompt templates, tokenisation with loss masks, batching and packing.

Typical use (what ``elmtune train`` does):

>>> data = prepare_data(DataConfig(path="train.jsonl", max_length=1024), tokenizer)  # doctest: +SKIP
>>> sampler = LengthGroupedBatchSampler(data.train_lengths, batch_size=8, seed=0)  # doctest: +SKIP
>>> loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=data.collate)  # doctest: +SKIP

Submodules, each usable alone: ``records`` (raw rows), ``formats`` (row validation), ``loading`` (typed examples),
``templates`` (prompt text), ``encoding`` (tokens and labels), ``preference`` (pairs), ``collate``, ``packing``,
``sampler``, ``prepare``.
"""

from elmtune.datasets.collate import collate_padded
from elmtune.datasets.encoding import (
    IGNORE_INDEX,
    TokenizeConfig,
    TokenizedExample,
    TokenizeReport,
    encode_rendered,
    tokenize_sft,
)
from elmtune.datasets.errors import DataRowError, DataSourceError
from elmtune.datasets.examples import (
    ChatExample,
    CompletionExample,
    InstructionExample,
    Message,
    PreferenceExample,
    SFTExample,
    TextExample,
)
from elmtune.datasets.formats import FORMATS, detect_format
from elmtune.datasets.loading import LoadReport, detect_source_format, load_preference_examples, load_sft_examples
from elmtune.datasets.packing import PackedDataset, block_causal_mask, collate_packed, pack_indices
from elmtune.datasets.preference import (
    PreferenceTokenizeConfig,
    TokenizedPair,
    collate_preference,
    tokenize_preference,
)
from elmtune.datasets.prepare import DataConfig, PreparedData, holdout_split, prepare_data
from elmtune.datasets.sampler import LengthGroupedBatchSampler
from elmtune.datasets.templates import (
    OPENELM_INSTRUCT_CHAT_TEMPLATE,
    Rendered,
    Segment,
    alpaca_prompt,
    alpaca_text,
    chat_text,
    llm_adapters_eval_prompt,
    render_preference,
    render_sft,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "OPENELM_INSTRUCT_CHAT_TEMPLATE",
    "ChatExample",
    "CompletionExample",
    "DataConfig",
    "DataRowError",
    "DataSourceError",
    "InstructionExample",
    "LengthGroupedBatchSampler",
    "LoadReport",
    "Message",
    "PackedDataset",
    "PreferenceExample",
    "PreferenceTokenizeConfig",
    "PreparedData",
    "Rendered",
    "SFTExample",
    "Segment",
    "TextExample",
    "TokenizeConfig",
    "TokenizeReport",
    "TokenizedExample",
    "TokenizedPair",
    "alpaca_prompt",
    "alpaca_text",
    "block_causal_mask",
    "chat_text",
    "collate_packed",
    "collate_padded",
    "collate_preference",
    "detect_format",
    "detect_source_format",
    "encode_rendered",
    "holdout_split",
    "llm_adapters_eval_prompt",
    "load_preference_examples",
    "load_sft_examples",
    "pack_indices",
    "prepare_data",
    "render_preference",
    "render_sft",
    "tokenize_preference",
    "tokenize_sft",
]
