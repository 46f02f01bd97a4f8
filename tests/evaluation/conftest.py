"""Fixtures for evaluation tests: the commonsense fixtures and a naive reference scorer that runs every
(context, continuation) alone, unpadded, as one full sequence."""

from pathlib import Path

import pytest
import torch

from elmtune.evaluation.rows import encode_request

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "commonsense"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures/commonsense``: ``llm_adapters/<task>/test.json``, ``lm_eval/<task>.jsonl``, ``mc/*.jsonl``."""
    return FIXTURES


@torch.inference_mode()
def naive_loglikelihood(model, context_ids, continuation_ids):
    """Sum of log p(continuation | context) from one unpadded forward pass over context + continuation[:-1]."""
    ids = list(context_ids) + list(continuation_ids)
    logits = model(torch.tensor([ids[:-1]])).logits[0].float()  # (L, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(context_ids) - 1
    return sum(float(logprobs[start + j, token]) for j, token in enumerate(continuation_ids))


@pytest.fixture
def naive_scores(tiny_model, tokenizer):
    """Reference: per question, the naive log-likelihood of every (context, continuation) request."""

    def score(questions, model=None, add_bos=True):
        model = model or tiny_model
        out = []
        for question in questions:
            row = []
            for context, continuation in question.requests:
                encoded = encode_request(tokenizer, context, continuation, add_bos)
                row.append(naive_loglikelihood(model, encoded.context, encoded.continuation))
            out.append(row)
        return out

    return score
