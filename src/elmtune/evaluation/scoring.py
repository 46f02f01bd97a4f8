"""Continuation log-likelihoods with shared-prefix batching.

Every question is tokenised with lm-eval's semantics, laid out as one shared-prefix row (or full rows; both in
:mod:`elmtune.evaluation.rows`), sorted longest first, right-padded and batched. Log-probabilities are computed in
fp32 from the logits of the needed positions only. A row's result never depends on its neighbours: padding is masked
and positions are explicit.

OpenELM (native, plain or with peft adapters) accepts the 4-D masks and position ids of the shared-prefix layout. Any
other transformers causal LM is probed once: if its shared-prefix scores of a question do not match its full-sequence
scores, it is scored with full sequences (one row per choice), which every causal LM supports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import Cache, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from elmtune.adapters.base_signature import base_model_of
from elmtune.evaluation.batching import Batcher
from elmtune.evaluation.config import BatchSize, Layout
from elmtune.evaluation.data import ChoiceScore, Question
from elmtune.evaluation.rows import (
    EncodedRequest,
    Row,
    attention_mask,
    collate,
    common_prefix,
    encode_request,
    pack_rows,
    packed_mask,
    plan_rows,
)
from elmtune.models.linear import linear
from elmtune.models.modeling import CACHE_FIELD
from elmtune.progress import Progress

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
MIN_BATCH_PREFIX = 16
"""Batches whose rows all start with at least this many identical tokens (e.g. the preamble every Apple prompt shares)
encode that prefix once and reuse its KV cache for every row (OpenELM only)."""
_LENGTH_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")
_PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
"""Largest shared-vs-full difference (nats, per choice) accepted by the probe, per dtype; 16-bit: 0.05."""


def model_max_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """The context length lm-eval would use: config length attributes, then the tokenizer's, then 2048."""
    config = getattr(model, "config", None)
    for attr in _LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**9:
        return limit
    return DEFAULT_MAX_LENGTH


def supports_shared_prefix(model: torch.nn.Module) -> bool | None:
    """True for elmtune's OpenELM (4-D masks and position ids are part of its contract); None when unknown.

    The fast path calls the OpenELM decoder inside a peft wrapper directly, which is right for adapters injected into
    its layers (LoRA, DoRA...) but not for prompt-learning methods, whose virtual tokens the wrapper adds: unknown.
    """
    from elmtune.models.modeling import OpenELMForCausalLM

    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    return True if isinstance(base_model_of(model), OpenELMForCausalLM) else None


class LoglikelihoodScorer:
    """Scores the choices of multiple-choice questions; keep one per model so the layout probe runs once.

    Args:
        model: A causal LM (OpenELM, peft-wrapped OpenELM, or any transformers causal LM) in eval mode.
        tokenizer: Its tokenizer.
        batch_size: Rows per forward pass, or ``"auto"`` (a token budget that halves on out-of-memory).
        add_bos: Prepend BOS to contexts (None: the tokenizer's default), as lm-eval's ``add_bos_token``.
        layout: ``"shared"`` (shared prefix), ``"full"`` (one row per choice, as lm-eval) or ``"auto"``.
        max_length: Context length for left truncation; default from the model config (lm-eval's rule).
        progress: Report progress on stderr (see :mod:`elmtune.progress`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: BatchSize = "auto",
        add_bos: bool | None = True,
        layout: Layout = "auto",
        max_length: int | None = None,
        progress: bool = True,
    ) -> None:
        if layout not in ("auto", "shared", "full"):
            raise ValueError(f"layout must be auto, shared or full, not {layout!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.max_length = max_length or model_max_length(model, tokenizer)
        self.progress = progress
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._keep_logits_arg = True
        self.layout: Layout = layout
        self.reuse_batch_prefix = bool(supports_shared_prefix(model))
        self.batcher = Batcher(batch_size, self.device, packed=self.reuse_batch_prefix)
        if layout == "auto" and self.reuse_batch_prefix:
            self.layout = "shared"

    # ----------------------------------------------------------------------------------------------------------------
    def encode(self, question: Question) -> list[EncodedRequest]:
        """lm-eval's tokenisation of every choice of ``question``."""
        return [encode_request(self.tokenizer, ctx, cont, self.add_bos) for ctx, cont in question.requests]

    def score(self, questions: Sequence[Question], description: str = "scoring") -> list[list[ChoiceScore]]:
        """Log-likelihood of every choice of every question.

        Args:
            questions: The questions.
            description: Progress-bar label.

        Returns:
            Per question, one :class:`ChoiceScore` per choice, in the questions' order.
        """
        encoded = [self.encode(q) for q in questions]
        if self.layout == "auto":
            decided = self._probe(encoded)
            if decided is None:  # every row is a plain causal sequence: any model scores it correctly
                return self._score_encoded(encoded, shared=True, description=description)
            self.layout = decided
        return self._score_encoded(encoded, shared=self.layout == "shared", description=description)

    # ----------------------------------------------------------------------------------------------------------------
    def _score_encoded(
        self, encoded: Sequence[Sequence[EncodedRequest]], *, shared: bool, description: str = "scoring"
    ) -> list[list[ChoiceScore]]:
        keyed: list[tuple[int, Row]] = []
        for q, requests in enumerate(encoded):
            keyed += [(q, row) for row in plan_rows(requests, shared=shared, max_length=self.max_length)]
        keyed.sort(key=lambda item: (-len(item[1].tokens), item[0]))
        results: list[list[ChoiceScore | None]] = [[None] * len(requests) for requests in encoded]
        remaining = _count_rows(keyed)
        # the one-question layout probe is too short to report
        bar = Progress(len(encoded), f"eval {description}", "questions", enabled=self.progress and len(encoded) > 1)

        def step(batch: Sequence[tuple[int, Row]]) -> None:
            scores = self._forward([row for _, row in batch])
            for (q, row), row_scores in zip(batch, scores, strict=True):
                for target, score in zip(row.targets, row_scores, strict=True):
                    results[q][target.request] = score
                remaining[q] -= 1
                if remaining[q] == 0:
                    bar.update(1)

        try:
            self.batcher.run(keyed, [len(row.tokens) for _, row in keyed], step)
        finally:
            bar.close()
        missing = [q for q, row in enumerate(results) if any(score is None for score in row)]
        if missing:
            raise RuntimeError(f"internal error: questions {missing[:5]} were not fully scored")
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _forward(self, rows: Sequence[Row]) -> list[list[ChoiceScore]]:
        if self.reuse_batch_prefix:
            picked = self._packed_logits(rows)
        else:
            picked = self._padded_logits(rows)
        return _choice_scores(rows, picked)

    def _padded_logits(self, rows: Sequence[Row]) -> torch.Tensor:
        """Logits (N, V) of every target token of ``rows`` (in order) from one right-padded batch (any model)."""
        ids, pos, seg = collate(rows, self.pad_id)
        width = ids.shape[1]
        keep = width - min(row.first_needed for row in rows)  # logits of the last `keep` positions suffice
        mask = attention_mask(rows, seg)
        logits = self._logits(ids.to(self.device), pos.to(self.device), mask.to(self.device), keep)
        offset = width - keep
        batch_index, row_index = [], []
        for b, row in enumerate(rows):
            for target in row.targets:
                batch_index += [b] * len(target.positions)
                row_index += [p - offset for p in target.positions]
        return logits[torch.tensor(batch_index), torch.tensor(row_index)]  # (N, V)

    def _packed_logits(self, rows: Sequence[Row]) -> torch.Tensor:
        """Logits (N, V) of every target token of ``rows`` (in order), OpenELM only.

        The batch's common prefix (at least ``MIN_BATCH_PREFIX`` tokens) is encoded once and its KV cache shared; the
        rest of the rows is packed into short sequences without padding between rows
        (:mod:`elmtune.evaluation.rows`); the output head runs on the target positions only.
        """
        prefix = common_prefix(rows) if len(rows) > 1 else 0
        packed = pack_rows(rows, prefix if prefix >= MIN_BATCH_PREFIX else 0, self.pad_id)
        cache = self._prefix_cache(rows[0], packed.prefix, packed.input_ids.shape[0])
        decoder = base_model_of(self.model)
        hidden = decoder.transformer(
            input_ids=packed.input_ids.to(self.device),
            position_ids=packed.position_ids.to(self.device),
            attention_mask=packed_mask(packed.owner, packed.segments, packed.prefix).to(self.device),
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state  # (B, T, d)
        where = [packed.locate(i, p) for i, row in enumerate(rows) for target in row.targets for p in target.positions]
        pack_index, column = zip(*where, strict=True)
        needed = hidden[torch.tensor(pack_index), torch.tensor(column)]  # (N, d)
        return linear(needed, decoder.output_weight())  # (N, V)

    def _prefix_cache(self, row: Row, prefix: int, copies: int) -> Cache | None:
        """KV cache of the first ``prefix`` tokens of ``row``, repeated ``copies`` times (None when prefix is 0)."""
        if not prefix:
            return None
        decoder = base_model_of(self.model)
        cache = decoder.transformer(
            input_ids=torch.tensor([row.tokens[:prefix]], device=self.device),
            position_ids=torch.tensor([row.positions[:prefix]], device=self.device),
            use_cache=True,
        )[CACHE_FIELD]
        cache.batch_repeat_interleave(copies)
        return cache

    def _logits(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": False}
        if self._keep_logits_arg:
            try:
                logits = self.model(**kwargs, logits_to_keep=keep).logits
            except TypeError as error:
                if "logits_to_keep" not in str(error):
                    raise
                self._keep_logits_arg = False
                logits = self.model(**kwargs).logits
        else:
            logits = self.model(**kwargs).logits
        return logits[:, -keep:]  # (B, keep, V)

    def _probe(self, encoded: Sequence[Sequence[EncodedRequest]]) -> Layout | None:
        """Decide between shared-prefix and full rows for a model of unknown mask support.

        Scores one question whose shared row has at least two choice segments both ways; None when no question has
        (then every shared row is a plain causal sequence and the question does not arise yet).
        """
        sample = next((requests for requests in encoded if _segment_count(requests, self.max_length) >= 2), None)
        if sample is None:
            return None
        tolerance = _PROBE_TOLERANCE.get(next(self.model.parameters()).dtype, 0.05)
        try:
            shared = self._score_encoded([sample], shared=True, description="probe")[0]
        except Exception as error:  # noqa: BLE001 - any failure means the model cannot take this layout
            logger.info("shared-prefix layout rejected (%s); scoring full sequences", error)
            return "full"
        full = self._score_encoded([sample], shared=False, description="probe")[0]
        worst = max(abs(a.loglikelihood - b.loglikelihood) for a, b in zip(shared, full, strict=True))
        if worst > tolerance:
            logger.info("shared-prefix scores differ from full sequences by %.3g; scoring full sequences", worst)
            return "full"
        return "shared"


def _segment_count(requests: Sequence[EncodedRequest], max_length: int) -> int:
    rows = plan_rows(requests, shared=True, max_length=max_length)
    return max(len({segment for segment in row.segments if segment > 0}) for row in rows)


def _choice_scores(rows: Sequence[Row], picked: torch.Tensor) -> list[list[ChoiceScore]]:
    """Per row, per target: the summed fp32 log-probability of its tokens, from their logits ``picked`` (N, V)."""
    targets = [token for row in rows for target in row.targets for token in target.tokens]
    picked = picked.float()
    logprobs = F.log_softmax(picked, dim=-1)  # (N, V) in fp32
    target_ids = torch.tensor(targets, device=picked.device)
    token_logprobs = logprobs.gather(1, target_ids[:, None])[:, 0].cpu()  # (N,)
    greedy = (picked.argmax(dim=-1) == target_ids).cpu()  # (N,)
    out: list[list[ChoiceScore]] = []
    start = 0
    for row in rows:
        row_scores = []
        for target in row.targets:
            end = start + len(target.tokens)
            row_scores.append(
                ChoiceScore(float(token_logprobs[start:end].sum()), end - start, bool(greedy[start:end].all()))
            )
            start = end
        out.append(row_scores)
    return out


def _count_rows(keyed: Sequence[tuple[int, Row]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for q, _ in keyed:
        counts[q] = counts.get(q, 0) + 1
    return counts


def score_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    *,
    batch_size: BatchSize = "auto",
    add_bos: bool | None = True,
    layout: Layout = "auto",
    progress: bool = False,
) -> list[list[ChoiceScore]]:
    """Log-likelihood of every choice of every question (a one-shot :class:`LoglikelihoodScorer`).

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        questions: The questions.
        batch_size: Rows per forward pass, or ``"auto"``.
        add_bos: Prepend BOS to contexts (None: the tokenizer's default).
        layout: ``"shared"``, ``"full"`` or ``"auto"``.
        progress: Report progress on stderr (see :mod:`elmtune.progress`).

    Returns:
        Per question, one :class:`ChoiceScore` per choice.
    """
    scorer = LoglikelihoodScorer(
        model, tokenizer, batch_size=batch_size, add_bos=add_bos, layout=layout, progress=progress
    )
    return scorer.score(questions)
