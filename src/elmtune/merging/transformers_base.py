"""Merging into a base other than OpenELM: any transformers causal LM (Llama, OLMo, Phi-3, GPT-NeoX, OPT, GPT-2...).

The merge itself is the one of :mod:`elmtune.merging.merge`; what differs from an OpenELM base is around it:

* the base is loaded in memory with ``AutoModelForCausalLM`` (the low-memory mode streams OpenELM bases only);
* an adapter's module ``model.layers.0.self_attn.q_proj`` updates the tensor of that path + ``.weight`` (peft's key
  layout is the state dict's); GPT-2's Conv1D weights are stored transposed (``fan_in_fan_out``);
* the merged checkpoint holds the keys ``save_pretrained`` writes (a tied output head is left out) and the base's
  own ``config.json``; the tokenizer files are copied when the base directory has them;
* the check compares the base with the adapter applied unmerged (forward hooks, fp32) with the merged directory
  loaded back by ``AutoModelForCausalLM.from_pretrained`` (fp32), on the probe texts.

A tied base (GPT-2, OPT) whose embedding or output head is adapted is refused: merging would change both.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elmtune.merging.adapter import ParsedAdapter
from elmtune.merging.options import MergeError, VerifyBudget
from elmtune.merging.sources import OverlaySource, StateDictSource
from elmtune.merging.verify import VerifyResult, budget_failures, compare_logits, probe_batch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
"""Tokenizer files copied from the base directory (those that exist)."""


@dataclass(frozen=True)
class TransformersBase:
    """A loaded base that is not OpenELM.

    Attributes:
        model: The loaded model (eval mode, on the CPU).
        source: Its tensors under the keys ``save_pretrained`` writes.
        embedding_key: The token embedding's key.
        head_key: The output head's key when it is tied to the embedding (left out of ``source``), else None.
    """

    model: nn.Module
    source: StateDictSource
    embedding_key: str
    head_key: str | None

    @property
    def tied(self) -> bool:
        """Whether the output head is the token embedding."""
        return self.head_key is not None


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def open_transformers_base(model: nn.Module) -> TransformersBase:
    """Wrap a loaded transformers causal LM as a merge base (see the module docstring)."""
    names = _module_names(model)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    embedding_key = f"{names[id(embedding)]}.weight"
    tied = head is not None and head.weight is embedding.weight
    head_key = f"{names[id(head)]}.weight" if tied else None
    state = model.state_dict()
    return TransformersBase(
        model, StateDictSource({k: v for k, v in state.items() if k != head_key}), embedding_key, head_key
    )


def refuse_tied_embedding_adapter(base: TransformersBase, adapter: ParsedAdapter, adapter_dir: Path) -> None:
    """Refuse an adapter on the embedding or head of a tied base: merging it would change both, unlike peft's model.

    Raises:
        MergeError: One line naming the module.
    """
    if base.head_key is None:
        return
    for target in adapter.targets:
        if target.key in (base.embedding_key, base.head_key):
            raise MergeError(
                f"adapter {adapter_dir} adapts {target.module}, but this {base.model.config.model_type} base ties its "
                "output head to the token embedding; elmtune merges such adapters into OpenELM bases only"
            )


def write_transformers_config(out_dir: Path, config: Any, dtype: torch.dtype) -> None:
    """Write the base's ``config.json`` with the output dtype."""
    out_config = copy.deepcopy(config)
    out_config.dtype = dtype
    out_config.save_pretrained(str(out_dir))


def copy_base_tokenizer(out_dir: Path, base_dir: Path | None) -> list[str]:
    """Copy the base directory's tokenizer files (those that exist; none without a directory)."""
    if base_dir is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
            copied.append(name)
    return copied


def _probe(base_dir: Path | None, texts: Sequence[str], vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe ``(input_ids, attention_mask)``, (B, L) each: the base's tokenizer, else the bundled one.

    Token ids beyond the model's vocabulary wrap around it (the check compares weights, not text).
    """
    if base_dir is not None and any((base_dir / name).is_file() for name in TOKENIZER_FILES[:2]):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=48, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
    else:
        ids, mask = probe_batch(texts)
    return ids % vocab_size, mask


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, L, V) fp32 logits of every position."""
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float().cpu()


def verify_transformers_merge(
    base: TransformersBase,
    adapter: ParsedAdapter,
    merged_dir: Path,
    *,
    base_dir: Path | None,
    budget: VerifyBudget,
    probe_texts: Sequence[str],
    device: str | torch.device = "cpu",
) -> VerifyResult:
    """Check a merged directory against the base with the adapter applied unmerged (see the module docstring).

    The base model is turned to fp32 in place (the merge has read it already); trained norms saved with the adapter
    replace its norms.
    """
    from transformers import AutoModelForCausalLM

    from elmtune.merging.unmerged_reference import attach_unmerged_adapter

    device = torch.device(device)
    reference_model = base.model.float().to(device).eval()
    if adapter.replaced:
        replaced = OverlaySource(base.source, adapter.replaced)
        reference_model.load_state_dict({k: replaced.get(k) for k in adapter.replaced}, strict=False)
    ids, mask = _probe(base_dir, probe_texts, reference_model.config.vocab_size)
    handles = attach_unmerged_adapter(reference_model, adapter, adapted_head=False, device=device)
    try:
        reference = _logits(reference_model, ids, mask, device)
    finally:
        for handle in handles:
            handle.remove()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).to(device).eval()
    candidate = _logits(merged, ids, mask, device)
    comparison = compare_logits(reference, candidate, mask)
    return VerifyResult(comparison, budget, budget_failures(comparison, budget), "the unmerged adapter")


__all__ = [
    "TOKENIZER_FILES",
    "TransformersBase",
    "copy_base_tokenizer",
    "open_transformers_base",
    "refuse_tied_embedding_adapter",
    "verify_transformers_merge",
    "write_transformers_config",
]
