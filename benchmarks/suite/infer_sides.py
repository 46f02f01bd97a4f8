"""Inference sides: multiple-choice evaluation (elmtune's scorer, lm-eval's HF backend) and greedy generation.

Evaluation sides score the same lm-eval-prompt questions (``eval_vs_lm_eval.py`` builds them from the fixtures in
``tests/fixtures/commonsense``) on the same random weights; each reports its picks so the row can check they agree.
The row's speed counts the whole process, start-up included. Generation sides decode ``new_tokens`` greedy tokens
(EOS suppressed until then, so every side does the same work) after a random ``prompt_tokens`` prompt: batch 1, then
``generate_batch`` prompts in one batch.
"""

from __future__ import annotations

import time
from typing import Any

from suite.measure import best_of, peak_rss_mib, set_threads
from suite.settings import ROOT, Settings
from suite.shapes import llama_model

DATA = ROOT / "tests" / "fixtures" / "commonsense"


def _questions(settings: Settings) -> list:
    from eval_vs_lm_eval import _questions as build

    return [q for task in settings.eval_tasks.split(",") for q in build("lm-eval", task, DATA, settings.eval_limit)]


def _preset_model(settings: Settings) -> tuple[Any, Any]:
    from elmtune.models import load_model, load_tokenizer

    return load_model(settings.preset).eval(), load_tokenizer()


def eval_elmtune(settings: Settings) -> dict[str, Any]:
    """elmtune's shared-prefix log-likelihood scorer (automatic batch size)."""
    from elmtune.evaluation.report import predict
    from elmtune.evaluation.scoring import LoglikelihoodScorer

    set_threads(settings)
    model, tokenizer = _preset_model(settings)
    questions = _questions(settings)
    start = time.perf_counter()
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size="auto", add_bos=True, progress=False)
    picks = [predict(q, s).pred for q, s in zip(questions, scorer.score(questions), strict=True)]
    return _eval_result(questions, picks, time.perf_counter() - start)


def eval_lm_eval(settings: Settings, apple: bool = False) -> dict[str, Any]:
    """lm-eval's HF backend (``HFLM``) at ``lm_eval_batch``, on elmtune's model or on Apple's code with its weights."""
    from eval_vs_lm_eval import _lm_eval_scores

    from elmtune.evaluation.lmeval import lm_eval_model
    from elmtune.evaluation.report import argmax

    set_threads(settings)
    model, tokenizer = _preset_model(settings)
    if apple:
        from suite.apple_code import apple_model

        model = apple_model(settings.apple_code, settings.preset, weights_from=model).eval()
    questions = _questions(settings)
    start = time.perf_counter()
    lm = lm_eval_model(model, tokenizer, batch_size=settings.lm_eval_batch, add_bos=True)
    picks = [argmax(scores) for scores in _lm_eval_scores(lm, questions)]
    return _eval_result(questions, picks, time.perf_counter() - start)


def _eval_result(questions: list, picks: list[int], seconds: float) -> dict[str, Any]:
    metrics = {"questions": len(questions), "scoring_seconds": seconds, "peak_rss_mib": peak_rss_mib()}
    return {"metrics": metrics, "info": {"picks": [int(p) for p in picks]}}


def greedy_decode(model: Any, ids: Any, new_tokens: int) -> None:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens after the (B, T) prompts ``ids`` (EOS held back)."""
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
            eos_token_id=2,
        )  # (B, T + new_tokens)
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape


def generation(settings: Settings, side: str) -> dict[str, Any]:
    """Greedy decoding speed of one side (elmtune, llama or apple): new tokens per second at batch 1 and batched."""
    import torch

    set_threads(settings)
    if side == "llama":
        model = llama_model(settings.preset).eval()
    elif side == "apple":  # its own random weights: EOS is held back, so the values do not change the work
        from suite.apple_code import apple_model

        torch.manual_seed(0)
        model = apple_model(settings.apple_code, settings.preset).eval()
    else:
        model, _ = _preset_model(settings)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 32000, (settings.generate_batch, settings.prompt_tokens), generator=generator)  # (P, T)
    n = settings.new_tokens
    single = best_of(settings, lambda: greedy_decode(model, prompts[:1], n))
    batched = best_of(settings, lambda: greedy_decode(model, prompts, n), warmup=0)
    metrics = {
        "batch1_tokens_per_s": n / single,
        "batched_tokens_per_s": settings.generate_batch * n / batched,
        "peak_rss_mib": peak_rss_mib(),
    }
    return {"metrics": metrics, "info": {}}
