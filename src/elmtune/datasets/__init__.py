"""Data loading, prompt templates, tokenisation with loss masks, batching and packing.

Typical use (what ``elmtune train`` does):

>>> data = prepare_data(DataConfig(path="train.jsonl", max_length=1024), tokenizer)  # doctest: +SKIP
>>> sampler = LengthGroupedBatchSampler(data.train_lengths, batch_size=8, seed=0)  # doctest: +SKIP
>>> loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=data.collate)  # doctest: +SKIP

Submodules, each usable alone: ``records`` (raw rows), ``formats`` (row validation), ``loading`` (typed examples),
``templates`` (prompt text), ``encoding`` (tokens and labels), ``tokenize_pipeline`` (the shared tokenisation
steps and counts), ``supervised`` and ``preference`` (the two kinds of examples), ``collate``, ``packing``, ``sampler``,
``prepare``.
"""

from elmtune.lazy_exports import export_names, lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "collate": ("collate_padded",),
    "config": ("DataConfig",),
    "encoding": ("IGNORE_INDEX", "encode_rendered"),
    "errors": ("DataRowError", "DataSourceError"),
    "examples": (
        "ChatExample",
        "CompletionExample",
        "InstructionExample",
        "Message",
        "PreferenceExample",
        "SFTExample",
        "TextExample",
    ),
    "formats": ("FORMATS", "detect_format"),
    "loading": ("LoadReport", "detect_source_format", "load_preference_examples", "load_sft_examples"),
    "packing": (
        "PackedDataset",
        "block_causal_mask",
        "collate_packed",
        "collate_packs_padding_free",
        "collate_padding_free",
        "pack_indices",
    ),
    "preference": ("PreferenceTokenizeConfig", "TokenizedPair", "collate_preference", "tokenize_preference"),
    "prepare": ("PreparedData", "holdout_split", "prepare_data"),
    "sampler": ("LengthGroupedBatchSampler",),
    "supervised": ("TokenizeConfig", "TokenizedExample", "tokenize_sft"),
    "templates": (
        "OPENELM_INSTRUCT_CHAT_TEMPLATE",
        "Rendered",
        "Segment",
        "alpaca_prompt",
        "llm_adapters_eval_prompt",
        "render_preference",
        "render_sft",
    ),
    "tokenize_pipeline": ("TokenizeReport", "tokenize_examples"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = export_names(_EXPORTS)
