"""The merge check: run a probe batch through the unmerged reference and the merged checkpoint and compare logits.

Both models run layer by layer from their tensor sources (one decoder layer's weights materialised at a time, plus
the embedding and the final norm), in fp32 arithmetic on fp32 copies of the stored weights. The check therefore
measures what the merge did to the weights (the fp32 arithmetic and the single rounding to the output dtype), not the
arithmetic of a half-precision runtime. Its memory does not grow with the depth of the model: one decoder layer in
fp32, the fp32 token embedding (and head), the probe's logits (B x L x V fp32 per model) and a few fp64 buffers of
16 positions x V for the comparison.

Numbers, over the real (unpadded) positions of the probe:

* ``max_abs_diff``: ``max |logits_ref - logits_merged|``;
* ``mean_kl``: mean over positions of ``KL(softmax(ref) || softmax(merged))`` (nats, computed in fp64);
* ``top1_agreement``: share of positions where both models predict the same next token.

Budgets (:meth:`VerifyBudget.for_dtype`): fp32 outputs must match within 1e-4 absolute on the logits; bf16/fp16
outputs need top-1 agreement >= 99 % and mean KL <= 1e-3. Non-finite logits always fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from elmtune.merging.adapter import ParsedAdapter
from elmtune.merging.options import PROBE_TEXTS, VerifyBudget
from elmtune.merging.sources import OverlaySource, TensorSource


@dataclass(frozen=True)
class LogitComparison:
    """Differences between two models' logits on the probe (see the module docstring)."""

    max_abs_diff: float
    mean_kl: float
    top1_agreement: float
    positions: int
    finite: bool
    max_abs_logit: float

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (as the merge report writes them)."""
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of the merge check.

    Attributes:
        comparison: Merged vs reference.
        budget: The budget applied.
        failures: One line per exceeded budget (empty when passed).
        reference: What the merged model was compared with.
        head_change: With a tied merge of an embedding adapter: merged vs Apple's unmerged model (whose head is the
            base embedding); informational, not budgeted.
    """

    comparison: LogitComparison
    budget: VerifyBudget
    failures: tuple[str, ...]
    reference: str
    head_change: LogitComparison | None = None

    @property
    def passed(self) -> bool:
        """Whether every budget held."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The ``verification`` section of ``merge_report.json``."""
        return {
            "passed": self.passed,
            "reference": self.reference,
            "compute": "fp32",
            **self.comparison.to_dict(),
            "budget": self.budget.to_dict(),
            "failures": list(self.failures),
            "head_change_vs_unmerged": None if self.head_change is None else self.head_change.to_dict(),
        }


def probe_batch(texts: Sequence[str] = PROBE_TEXTS, max_length: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise the probe with the bundled tokenizer: ``(input_ids, attention_mask)``, each (B, L), right-padded."""
    from elmtune.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def compare_logits(
    reference: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor, *, chunk: int = 16
) -> LogitComparison:
    """Compare (B, L, V) logits at the positions where ``mask`` (B, L) is 1.

    The fp64 work runs on ``chunk`` positions at a time, so the comparison needs a few ``chunk x V`` fp64 buffers
    (about 4 MiB each for OpenELM's 32k vocabulary) rather than several copies of the whole probe's logits.
    """
    keep = mask.bool()
    positions = int(keep.sum())
    ref_all, cand_all = reference[keep], candidate[keep]  # (N, V) each, in the logits' dtype
    max_diff = kl_sum = max_logit = 0.0
    agree = 0
    finite = True
    for start in range(0, positions, chunk):
        ref = ref_all[start : start + chunk].double()  # (n, V)
        cand = cand_all[start : start + chunk].double()  # (n, V)
        max_logit = max(max_logit, float(ref.abs().nan_to_num(0).max()))
        if not (torch.isfinite(ref).all() and torch.isfinite(cand).all()):
            finite = False
            continue
        ref_logp, cand_logp = ref.log_softmax(-1), cand.log_softmax(-1)
        kl_sum += float((ref_logp.exp() * (ref_logp - cand_logp)).sum())  # Σ over positions of KL(ref || cand)
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        max_diff = max(max_diff, float((ref - cand).abs().max()))
    if not finite:
        nan = math.nan
        return LogitComparison(nan, nan, nan, positions, False, max_logit)
    return LogitComparison(
        max_abs_diff=max_diff,
        mean_kl=max(kl_sum / positions, 0.0),
        top1_agreement=agree / positions,
        positions=positions,
        finite=True,
        max_abs_logit=max_logit,
    )


def budget_failures(comparison: LogitComparison, budget: VerifyBudget) -> tuple[str, ...]:
    """One line per exceeded budget (non-finite logits always fail)."""
    if not comparison.finite:
        return ("the logits contain NaN or inf",)
    failures = []
    if budget.max_abs_diff is not None and not comparison.max_abs_diff <= budget.max_abs_diff:
        failures.append(f"max |logit diff| {comparison.max_abs_diff:.3g} > {budget.max_abs_diff:g}")
    if budget.max_kl is not None and not comparison.mean_kl <= budget.max_kl:
        failures.append(f"mean KL {comparison.mean_kl:.3g} > {budget.max_kl:g}")
    if budget.min_top1 is not None and not comparison.top1_agreement >= budget.min_top1:
        failures.append(f"top-1 agreement {comparison.top1_agreement:.2%} < {budget.min_top1:.0%}")
    return tuple(failures)


def _materialise(module: nn.Module, prefix: str, source: TensorSource, device: torch.device) -> None:
    tensors = {name: source.get(f"{prefix}.{name}").to(device, torch.float32) for name in module.state_dict()}
    module.load_state_dict(tensors, assign=True)


@torch.no_grad()
def streamed_logits(
    config: Any,
    source: TensorSource,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    attach: Callable[[nn.Module], list[Any]] | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Logits (B, L, V) of the OpenELM stored in ``source``, computed one decoder layer at a time in fp32.

    Args:
        config: The model's ``OpenELMConfig``.
        source: Its tensors (Apple's keys).
        input_ids: (B, L) token ids.
        attention_mask: (B, L) padding mask.
        attach: Called with the (weightless) model before the forward; returns hook handles to remove afterwards
            (used to attach the unmerged adapter).
        device: Where to compute.
    """
    from elmtune.models.modeling import OpenELMForCausalLM

    device = torch.device(device)
    with torch.device("meta"):
        model = OpenELMForCausalLM(config).float().eval()
    resident = ["transformer.token_embeddings", "transformer.norm"] + ([] if model.head_is_tied else ["lm_head"])
    for name in resident:
        _materialise(model.get_submodule(name), name, source, device)
    if model.head_is_tied:
        model.lm_head.weight = model.transformer.token_embeddings.weight  # the loaded embedding is the head

    def load_layer(index: int) -> Callable[..., None]:
        return lambda module, args: _materialise(module, f"transformer.layers.{index}", source, device)

    def release(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        module.to("meta")  # frees the layer's weights

    handles = []
    for index, layer in enumerate(model.transformer.layers):
        handles.append(layer.register_forward_pre_hook(load_layer(index)))
        handles.append(layer.register_forward_hook(release))
    handles += attach(model) if attach is not None else []
    try:
        output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
        return output.logits.float().cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.to("meta")


def verify_merge(
    config: Any,
    base: TensorSource,
    adapter: ParsedAdapter,
    merged_config: Any,
    merged: TensorSource,
    *,
    adapted_head: bool,
    budget: VerifyBudget,
    probe_texts: Sequence[str] = PROBE_TEXTS,
    device: str | torch.device = "cpu",
) -> VerifyResult:
    """Check a merged checkpoint against the base with the adapter applied unmerged.

    Args:
        config: The base config.
        base: The base tensors.
        adapter: The parsed adapter (trained norms in it replace the base norms in the reference).
        merged_config: The merged checkpoint's config (read back from its ``config.json``).
        merged: The merged tensors (read back from its files).
        adapted_head: Tied merge of an embedding adapter: the reference head is the adapted embedding, and the
            difference to Apple's unmerged model (base head) is reported as ``head_change``.
        budget: The allowed drift.
        probe_texts: The prompts.
        device: Where to compute.

    Returns:
        The :class:`VerifyResult`.
    """
    from elmtune.merging.unmerged_reference import attach_unmerged_adapter

    ids, mask = probe_batch(probe_texts)
    reference_source = OverlaySource(base, adapter.replaced)

    def run_reference(head: bool) -> torch.Tensor:
        attach = lambda model: attach_unmerged_adapter(model, adapter, adapted_head=head, device=device)  # noqa: E731
        return streamed_logits(config, reference_source, ids, mask, attach=attach, device=device)

    reference = run_reference(adapted_head)
    candidate = streamed_logits(merged_config, merged, ids, mask, device=device)
    comparison = compare_logits(reference, candidate, mask)
    head_change = compare_logits(run_reference(False), candidate, mask) if adapted_head else None
    what = "the unmerged adapter with the adapted embedding as tied head" if adapted_head else "the unmerged adapter"
    return VerifyResult(comparison, budget, budget_failures(comparison, budget), what, head_change)


__all__ = [
    "LogitComparison",
    "VerifyResult",
    "budget_failures",
    "compare_logits",
    "probe_batch",
    "streamed_logits",
    "verify_merge",
]
