"""Commonsense-reasoning evaluation (Apple's, LLM-Adapters' and lm-eval's protocols) and held-out preference pairs.

Entry points: :func:`run_eval` (what ``elmtune eval`` calls), :func:`evaluate_model` (a model already in memory),
:class:`LoglikelihoodScorer` / :func:`score_questions` (shared-prefix log-likelihoods of any multiple-choice
questions), :func:`generate_answers` (LLM-Adapters' generation protocol) and :func:`evaluate_preference` (implicit
rewards of base + adapter against the base on preference pairs).

Submodules: ``config`` (the settings; imports no torch), ``data`` (files, rows, questions), ``protocols`` (Apple's and
the ``mc`` protocol), ``generation`` (LLM-Adapters' generation protocol), ``preference`` (the preference protocol),
``lmeval`` (lm-eval's tasks and evaluator), ``scoring`` with ``rows`` and ``batching`` (the log-likelihood scorer),
``report`` (metrics and outputs) and ``runner`` (loading a model and running a protocol). The names below load on
first use, so ``import elmtune.evaluation.config`` stays light.
"""

from elmtune.lazy_exports import export_names, lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "config": ("EvalConfig", "GenerationSettings", "MCFormat", "PreferenceSettings"),
    "data": ("ChoiceScore", "Question"),
    "generation": ("generate_answers",),
    "report": ("EvalReport", "ModelResults", "TaskResult"),
    "preference": ("score_pairs",),
    "runner": ("ModelSpec", "evaluate_model", "evaluate_preference", "load_for_eval", "run_eval"),
    "scoring": ("LoglikelihoodScorer", "score_questions"),
}

__all__ = export_names(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
