"""Inference sides: multiple-choice evaluation (elmtune's scorer, lm-eval's HF backend) and greedy generation.

Evaluation sides score the same lm-eval-prompt questions (``eval_vs_lm_eval.py`` builds them from the fixtures in
``tests/fixtures/commonsense``) on the same random weights; each reports its picks so the row can check they agree.
The row's speed counts the whole process, start-up included. Generation sides decode ``new_tokens`` greedy tokens
(EOS suppressed until then, so every side does the same work) after a random ``prompt_tokens`` prompt: batch 1, then
``generate_batch`` prompts in one batch.
"""

from __future__ import annotations

import json
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

from suite.measure import best_of, peak_rss_mib, set_threads
from suite.settings import ROOT, Settings
from suite.shapes import llama_model

DATA = ROOT / "tests" / "fixtures" / "commonsense"
Request = namedtuple("Request", "args")  # lm-eval reads a request's (context, continuation) from .args


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
    return _eval_result(len(questions), picks, time.perf_counter() - start)


def apple_eval_files(settings: Settings) -> tuple[Path, Path]:
    """Where :func:`write_apple_eval` puts the Apple side's requests and elmtune's weights."""
    return Path(settings.workdir) / "apple-eval.json", Path(settings.workdir) / "apple-eval-weights.safetensors"


def write_apple_eval(settings: Settings) -> dict[str, Any]:
    """The eval group's set-up: the questions' requests and elmtune's weights as files, for Apple's side.

    Apple's code may run under another environment (``--apple-python``), so the side gets elmtune's part (the
    questions with lm-eval's prompts, the preset's weights, the model's maximum length) from files written here.
    """
    if not settings.apple_code:
        return {}
    from elmtune.evaluation.lmeval import model_max_length
    from suite.apple_code import save_weights

    model, tokenizer = _preset_model(settings)
    requests, weights_file = apple_eval_files(settings)
    run = {"requests": [q.requests for q in _questions(settings)], "max_length": model_max_length(model, tokenizer)}
    requests.write_text(json.dumps(run))
    save_weights(model, weights_file)
    return {}


def _lm_eval_picks(lm: Any, requests: list[list[tuple[str, str]]]) -> list[int]:
    """Each question's pick by lm-eval's log-likelihoods of its (context, continuation) requests; first on ties."""
    flat = [Request(tuple(request)) for question in requests for request in question]
    results = lm.loglikelihood(flat, disable_tqdm=True)
    picks, cursor = [], 0
    for question in requests:
        scores = [loglikelihood for loglikelihood, _ in results[cursor : cursor + len(question)]]
        picks.append(scores.index(max(scores)))
        cursor += len(question)
    return picks


def eval_lm_eval(settings: Settings, apple: bool = False) -> dict[str, Any]:
    """lm-eval's HF backend (``HFLM``) at ``lm_eval_batch``, on elmtune's model or on Apple's code with its weights.

    Apple's side imports no elmtune (it may run under ``--apple-python``): its requests, weights and maximum length
    come from :func:`write_apple_eval`'s files, its tokenizer from the bundled ``tokenizer.json``.
    """
    from lm_eval.models.huggingface import HFLM

    set_threads(settings)
    if apple:
        from suite.apple_code import apple_model, bundled_tokenizer, load_weights

        requests_file, weights_file = apple_eval_files(settings)
        run = json.loads(requests_file.read_text())
        model = apple_model(settings.apple_code, settings.preset).eval()
        load_weights(model, weights_file)
        tokenizer, requests, max_length = bundled_tokenizer(), run["requests"], run["max_length"]
    else:
        from elmtune.evaluation.lmeval import model_max_length

        model, tokenizer = _preset_model(settings)
        requests = [q.requests for q in _questions(settings)]
        max_length = model_max_length(model, tokenizer)
    start = time.perf_counter()
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        backend="causal",
        batch_size=settings.lm_eval_batch,
        max_length=max_length,
        add_bos_token=True,
    )
    picks = _lm_eval_picks(lm, requests)
    return _eval_result(len(requests), picks, time.perf_counter() - start)


def _eval_result(questions: int, picks: list[int], seconds: float) -> dict[str, Any]:
    metrics = {"questions": questions, "scoring_seconds": seconds, "peak_rss_mib": peak_rss_mib()}
    return {"metrics": metrics, "info": {"picks": [int(p) for p in picks]}}


def greedy_decode(model: Any, ids: Any, new_tokens: int, **generate_kwargs: Any) -> None:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens after the (B, T) prompts ``ids`` (EOS held back).

    ``generate_kwargs`` go to ``generate`` as well (e.g. ``cache_implementation="static"``).
    """
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
            **generate_kwargs,
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


def weight_read_peak(settings: Settings) -> dict[str, Any]:
    """Batch-1 decoding's floor: ``new_tokens`` tokens through every linear of the model as products, nothing else.

    A greedy decoding step at batch 1 multiplies one row by every weight matrix (the projections of every layer and
    the vocabulary head), so it reads all of them once per token; on a CPU that is bound by memory bandwidth. This
    side times exactly those products on the preset's weights, each with a (1, 1, in) row as the model computes
    them, ``new_tokens`` times per timed call and best of ``steps`` after ``warmup``, as the generation sides are
    timed; no attention, norms, cache or sampling. It is the most tokens per second a decoder of the model reaches
    in fp32 on this machine's threads with the installed BLAS.
    """
    import torch
    import torch.nn.functional as F

    set_threads(settings)
    model, _ = _preset_model(settings)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]  # each (out, in)
    rows = [torch.randn(1, 1, w.shape[1]) for w in weights]  # each (1, 1, in)
    n = settings.new_tokens

    def tokens() -> None:
        for _ in range(n):
            for weight, row in zip(weights, rows, strict=True):
                F.linear(row, weight)  # (1, 1, out)

    with torch.inference_mode():
        seconds = best_of(settings, tokens)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    metrics = {"tokens_per_s": n / seconds, "gb_per_s": n * weight_bytes / seconds / 1e9}
    return {"metrics": metrics, "info": {"weight_mib": round(weight_bytes / 2**20, 1), "matrices": len(weights)}}
