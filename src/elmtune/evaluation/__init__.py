"""Commonsense-reasoning evaluation: Apple's, LLM-Adapters' and lm-eval's protocols with one fast scorer.

Entry points: :func:`run_eval` (what ``elmtune eval`` calls), :func:`evaluate_model` (a model already in memory),
:class:`LoglikelihoodScorer` / :func:`score_questions` (shared-prefix log-likelihoods of any multiple-choice
questions), and the prompt helpers of :mod:`elmtune.evaluation.prompts`.
"""

from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.generation import GenerationSettings, generate_answers
from elmtune.evaluation.items import ChoiceScore, Question
from elmtune.evaluation.loading import ModelSpec, load_for_eval
from elmtune.evaluation.mc import MCFormat
from elmtune.evaluation.report import EvalReport, ModelResults, TaskResult
from elmtune.evaluation.runner import evaluate_model, run_eval
from elmtune.evaluation.scoring import LoglikelihoodScorer, score_questions

__all__ = [
    "ChoiceScore",
    "EvalConfig",
    "EvalReport",
    "GenerationSettings",
    "LoglikelihoodScorer",
    "MCFormat",
    "ModelResults",
    "ModelSpec",
    "Question",
    "TaskResult",
    "evaluate_model",
    "generate_answers",
    "load_for_eval",
    "run_eval",
    "score_questions",
]
