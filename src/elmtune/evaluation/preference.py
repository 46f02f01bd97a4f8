r"""The ``preference`` protocol: held-out preference pairs, scored by base + adapter and by the base alone.

Pairs are read by :func:`~elmtune.datasets.loading.load_preference_examples` (any preference format; rows with an
empty side are skipped and counted) and tokenised by :func:`~elmtune.datasets.preference.tokenize_preference` with a
DPO run's template and length settings (pairs whose sides are identical tokens are skipped and counted). A side's
log-probability ``log pi(y|x)`` is the sum over the reply's target tokens, as TRL's ``logps``. The tuned model is the
loaded peft model; the base is the same model with its adapter switched off
(:func:`~elmtune.adapters.state.disable_adapters`), so each model scores each pair once, in the same batch. Each pair
is one row with the prompt its two sequences share computed once
(:class:`~elmtune.finetune.shared_prompt.SharedPromptPairs`, the layout DPO training uses).

Metrics, with TRL's ``DPOTrainer`` names (means over the pairs, each with its standard error):

- ``rewards/chosen``, ``rewards/rejected``: the implicit reward ``beta * (log pi_tuned(y|x) - log pi_base(y|x))``;
- ``rewards/accuracies``: the share of pairs whose chosen reward is strictly higher (a tie is not a win);
- ``rewards/margins``: ``reward_chosen - reward_rejected``;
- ``logps/chosen``, ``logps/rejected``: the model's summed log-probabilities;
- ``logps/accuracies``, ``logps/margins`` (elmtune's, named after TRL's): the share of pairs whose chosen reply is
  strictly more likely, and ``logp_chosen - logp_rejected``.

The base, its own reference, has no reward metrics (its implicit reward is 0 by definition); the table shows ``n/a``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elmtune.datasets.examples import PreferenceExample
from elmtune.datasets.loading import LoadReport, load_preference_examples
from elmtune.datasets.preference import (
    PreferenceTokenizeConfig,
    TokenizedPair,
    collate_preference,
    tokenize_preference,
)
from elmtune.datasets.tokenize_pipeline import TokenizeReport
from elmtune.evaluation.batching import Batcher
from elmtune.evaluation.config import BatchSize, EvalConfig, PreferenceSettings
from elmtune.evaluation.data import DataError, file_provenance
from elmtune.evaluation.report import MetricValue, TaskResult, mean_metric
from elmtune.finetune.shared_prompt import SharedPromptPairs
from elmtune.models import PAD_TOKEN_ID
from elmtune.models.finite import NonFiniteError
from elmtune.progress import Progress


@dataclass(frozen=True)
class SideLogps:
    """Summed target-token log-probabilities of both replies of one pair under one model.

    Attributes:
        chosen: ``log pi(chosen | prompt)``.
        rejected: ``log pi(rejected | prompt)``.
    """

    chosen: float
    rejected: float

    @property
    def margin(self) -> float:
        """``chosen - rejected``."""
        return self.chosen - self.rejected


@dataclass(frozen=True)
class ScoredPair:
    """One evaluated pair: its log-probabilities under the tuned model and under the base.

    Attributes:
        index: Position among the evaluated pairs (source order, skipped rows left out).
        where: The source row, e.g. ``"pairs.jsonl, line 7"``.
        truncated: Whether either sequence was shortened to the length settings.
        tuned: Log-probabilities under base + adapter.
        base: Log-probabilities under the base (the reference).
    """

    index: int
    where: str
    truncated: bool
    tuned: SideLogps
    base: SideLogps

    def rewards(self, beta: float) -> SideLogps:
        """The implicit rewards ``beta * (log pi_tuned - log pi_base)`` of both replies."""
        return SideLogps(
            beta * (self.tuned.chosen - self.base.chosen), beta * (self.tuned.rejected - self.base.rejected)
        )


@dataclass(frozen=True)
class PreferenceData:
    """The tokenised pairs of one source and what was skipped on the way.

    Attributes:
        source: The source as given (file, dataset directory or hub id).
        pairs: The pairs that are evaluated, in source order.
        load_report: Rows read, invalid rows and rows without a usable pair (empty sides), from the loader.
        tokenize_report: Pairs dropped at tokenisation (identical sides, special-token text, over-long).
    """

    source: str
    pairs: list[TokenizedPair]
    load_report: LoadReport
    tokenize_report: TokenizeReport

    @property
    def skipped(self) -> dict[str, int]:
        """Rows not evaluated, by reason (zero counts left out)."""
        drops, tokens = self.load_report.pair_drops, self.tokenize_report
        counts = {
            "invalid": self.load_report.invalid + tokens.invalid,
            "empty_prompt": drops.empty_prompt,
            "empty_reply": drops.empty_reply,
            "no_lower_rated": drops.no_lower_rated,
            "too_few_completions": drops.too_few_completions,
            "identical": tokens.dropped_identical,
            "overlong": tokens.dropped_overlong,
            "no_target": tokens.dropped_no_target,
        }
        return {reason: count for reason, count in counts.items() if count}

    def note(self) -> str:
        """One line for the table: pairs evaluated, skipped by reason, truncated."""
        skipped = self.skipped
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in skipped.items())
        by_reason = f" ({reasons})" if reasons else ""
        evaluated = f"{len(self.pairs)} pairs evaluated, {sum(skipped.values())} skipped{by_reason}"
        return f"{evaluated}, {self.tokenize_report.truncated} truncated"


def preference_sources(entries: Sequence[str], tasks: Sequence[str] | None) -> dict[str, str]:
    """Map ``--data`` entries to ``{task: source}``: ``TASK=SOURCE`` or a source named by its file stem or last part.

    Raises:
        DataError: Two entries share a name, or a requested task names no entry.
    """
    found: dict[str, str] = {}
    for entry in entries:
        name, source = entry.split("=", 1) if "=" in entry and not Path(entry).exists() else (None, entry)
        name = name or (Path(source).stem if Path(source).suffix else Path(source.rstrip("/")).name)
        if name in found:
            raise DataError(f"--data {entry}: a second source named {name!r}; name them with TASK=SOURCE")
        found[name] = source
    if tasks is None:
        return found
    unknown = [task for task in tasks if task not in found]
    if unknown:
        raise DataError(f"--tasks {', '.join(unknown)}: no such --data source; found {', '.join(found)}")
    return {task: found[task] for task in tasks}


@dataclass(frozen=True)
class PreferenceSource:
    """The pairs of one ``--data`` source as the loader read them, before tokenisation.

    Attributes:
        task: The task name (``TASK=`` of the entry, or the source's name).
        source: A local file, a dataset directory or a hub dataset id.
        examples: The usable pairs, in source order.
        load_report: Rows read, invalid rows and rows without a usable pair.
    """

    task: str
    source: str
    examples: list[PreferenceExample]
    load_report: LoadReport


def read_preference_sources(config: EvalConfig) -> list[PreferenceSource]:
    """Read every ``--data`` source of pairs (before any model is loaded, so a bad file fails fast).

    Args:
        config: The run settings: ``data``, ``tasks``, ``limit`` (the first usable pairs) and ``preference``.

    Returns:
        One :class:`PreferenceSource` per task.

    Raises:
        DataSourceError: A source cannot be read or holds no usable pair.
        DataRowError: A malformed row (unless ``skip_invalid``).
        DataError: Two sources share a name, or ``tasks`` names no source.
    """
    settings = config.preference
    sources = []
    for task, source in preference_sources(config.data, config.tasks).items():
        examples, report = load_preference_examples(
            source, settings.data_format, split=settings.split, skip_invalid=settings.skip_invalid, limit=config.limit
        )
        sources.append(PreferenceSource(task, source, examples, report))
    return sources


def tokenize_source(source: PreferenceSource, tokenizer: Any, settings: PreferenceSettings) -> PreferenceData:
    """Tokenise the pairs of one source as a DPO run with the same template and length settings would.

    Args:
        source: The pairs as read.
        tokenizer: The model's tokenizer.
        settings: Template, lengths and ``skip_invalid``.

    Returns:
        The pairs and the loader's and tokeniser's reports.

    Raises:
        DataRowError: Special-token text in a pair (unless ``skip_invalid``).
        DataError: No pair is left after tokenisation.
    """
    config = PreferenceTokenizeConfig(
        max_length=settings.max_length, max_prompt_length=settings.max_prompt_length, template=settings.data_template
    )
    pairs, report = tokenize_preference(source.examples, tokenizer, config, skip_invalid=settings.skip_invalid)
    data = PreferenceData(source.source, pairs, source.load_report, report)
    if not pairs:
        raise DataError(f"{source.source}: no pair left to evaluate ({data.note()})")
    return data


def _logps(model: torch.nn.Module, layout: SharedPromptPairs) -> torch.Tensor:
    """(2B,) summed target-token log-probs of the chosen then the rejected sequences of a batch's pairs."""
    return layout.logps(model)[0].cpu()


def _require_finite(logps: torch.Tensor, pairs: Sequence[TokenizedPair], model: str) -> None:
    """Raise :class:`NonFiniteError` naming the first pair whose (2B,) ``logps`` holds NaN or an infinity."""
    bad = ~torch.isfinite(logps.view(2, -1)).all(dim=0)  # (B,)
    if bool(bad.any()):
        where = pairs[int(bad.nonzero()[0])].where
        raise NonFiniteError(
            f"{where}: the {model} gives a non-finite log-probability; check the model and adapter weights (or "
            "evaluate in fp32)"
        )


@torch.inference_mode()
def score_pairs(
    model: torch.nn.Module, pairs: Sequence[TokenizedPair], batch_size: BatchSize = "auto", *, progress: bool = False
) -> list[tuple[SideLogps, SideLogps]]:
    """Score every pair under base + adapter and under the base (the adapter switched off), in batches.

    Args:
        model: A peft model (base + adapter) in eval mode.
        pairs: Tokenised pairs.
        batch_size: Pairs per forward pass (two rows each), or ``"auto"`` (a token budget that halves on
            out-of-memory).
        progress: Report progress on stderr (see :mod:`elmtune.progress`).

    Returns:
        Per pair, in input order: ``(tuned, base)`` log-probabilities.

    Raises:
        NonFiniteError: A log-probability is NaN or infinite.
        AdapterError: ``model`` is not a peft model.
    """
    from elmtune.adapters import disable_adapters

    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i]))  # longest first: least padding
    scores: dict[int, tuple[SideLogps, SideLogps]] = {}
    bar = Progress(len(pairs), "eval preference", "pairs", enabled=progress)

    def step(indices: Sequence[int]) -> None:
        batch_pairs = [pairs[i] for i in indices]
        batch = collate_preference(batch_pairs, pad_token_id=PAD_TOKEN_ID)
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        layout = SharedPromptPairs.from_batch(batch, pad_token_id=PAD_TOKEN_ID)  # one row per pair, prompt once
        tuned = _logps(model, layout)  # (2B,)
        _require_finite(tuned, batch_pairs, "model with its adapter")
        with disable_adapters(model) as base_model:
            base = _logps(base_model, layout)  # (2B,)
        _require_finite(base, batch_pairs, "base model")
        for row, i in enumerate(indices):
            scores[i] = (
                SideLogps(float(tuned[row]), float(tuned[len(indices) + row])),
                SideLogps(float(base[row]), float(base[len(indices) + row])),
            )
        bar.update(len(indices))

    try:
        Batcher(batch_size, device).run(order, [2 * len(pairs[i]) for i in order], step)
    finally:
        bar.close()
    return [scores[i] for i in range(len(pairs))]


def _share(flags: Sequence[bool]) -> list[float]:
    return [1.0 if flag else 0.0 for flag in flags]


def _logp_metrics(sides: Sequence[SideLogps]) -> list[MetricValue]:
    return [
        mean_metric("logps/accuracies", _share([s.chosen > s.rejected for s in sides])),
        mean_metric("logps/margins", [s.margin for s in sides], percent=False),
        mean_metric("logps/chosen", [s.chosen for s in sides], percent=False),
        mean_metric("logps/rejected", [s.rejected for s in sides], percent=False),
    ]


def preference_metrics(scored: Sequence[ScoredPair], beta: float) -> tuple[list[MetricValue], list[MetricValue]]:
    """The tuned model's metrics (implicit rewards against the base, then its log-probs) and the base's (log-probs).

    Args:
        scored: The evaluated pairs.
        beta: The implicit reward's temperature.

    Returns:
        ``(tuned, base)`` metrics, as the module docstring lists them.
    """
    rewards = [pair.rewards(beta) for pair in scored]
    tuned = [
        mean_metric("rewards/accuracies", _share([r.chosen > r.rejected for r in rewards])),
        mean_metric("rewards/margins", [r.margin for r in rewards], percent=False),
        mean_metric("rewards/chosen", [r.chosen for r in rewards], percent=False),
        mean_metric("rewards/rejected", [r.rejected for r in rewards], percent=False),
        *_logp_metrics([pair.tuned for pair in scored]),
    ]
    return tuned, _logp_metrics([pair.base for pair in scored])


def _examples(scored: Sequence[ScoredPair], beta: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-pair records of the tuned model (both models' log-probs and the rewards) and of the base."""
    tuned, base = [], []
    for pair in scored:
        head = {"index": pair.index, "where": pair.where, "truncated": pair.truncated}
        base_logps = {"base_chosen_logp": pair.base.chosen, "base_rejected_logp": pair.base.rejected}
        rewards = pair.rewards(beta)
        tuned.append(
            {
                **head,
                **base_logps,
                "tuned_chosen_logp": pair.tuned.chosen,
                "tuned_rejected_logp": pair.tuned.rejected,
                "reward_chosen": rewards.chosen,
                "reward_rejected": rewards.rejected,
            }
        )
        base.append({**head, **base_logps})
    return tuned, base


def _provenance(source: str, split: str) -> list[dict[str, str]]:
    path = Path(source)
    if path.is_file():
        return file_provenance(path)
    if path.is_dir():
        return [{"path": str(path), "split": split}]
    return [{"dataset": f"{source}:{split}"}]


def run_preference_task(
    model: torch.nn.Module, tokenizer: Any, source: PreferenceSource, config: EvalConfig
) -> tuple[TaskResult, TaskResult]:
    """Evaluate one source of pairs: the tuned model's result and the base's.

    Args:
        model: A peft model (base + adapter) in eval mode.
        tokenizer: Its tokenizer.
        source: The pairs as read (:func:`read_preference_sources`).
        config: The run settings (``preference``, ``batch_size``, ``progress``).

    Returns:
        ``(tuned, base)`` task results; ``note`` counts the pairs evaluated and skipped.
    """
    settings = config.preference
    started = time.perf_counter()
    data = tokenize_source(source, tokenizer, settings)
    logps = score_pairs(model, data.pairs, config.batch_size, progress=config.progress)
    scored = [
        ScoredPair(i, pair.where, pair.truncated, tuned, base)
        for i, (pair, (tuned, base)) in enumerate(zip(data.pairs, logps, strict=True))
    ]
    seconds = time.perf_counter() - started
    tuned_metrics, base_metrics = preference_metrics(scored, settings.beta)
    tuned_examples, base_examples = _examples(scored, settings.beta)
    details = {
        "beta": settings.beta,
        "format": data.load_report.format,
        "template": settings.data_template,
        "max_length": settings.max_length,
        "max_prompt_length": settings.max_prompt_length,
        "rows": data.load_report.rows,
        "pairs": len(data.pairs),
        "skipped": data.skipped,
        "truncated": data.tokenize_report.truncated,
        "reference": "the base model (adapter switched off)",
    }
    provenance = _provenance(source.source, settings.split)
    results = [
        TaskResult(source.task, "preference", metrics, seconds, provenance, examples, details=details, note=data.note())
        for metrics, examples in ((tuned_metrics, tuned_examples), (base_metrics, base_examples))
    ]
    return results[0], results[1]
