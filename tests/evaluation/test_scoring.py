"""The fast scorer: shared-prefix scores equal naive full-sequence scores, do not depend on the batch, back off on
out-of-memory, and fall back to full rows for models that cannot take the shared-prefix layout."""

import json

import pytest
import torch

from elmtune.errors import ElmtuneError
from elmtune.evaluation.commonsense import apple_question, load_rows
from elmtune.evaluation.encoding import EncodedRequest
from elmtune.evaluation.items import Question
from elmtune.evaluation.layout import plan_rows, shared_prefix_mask
from elmtune.evaluation.lmeval_tasks import LM_EVAL_TASKS, lmeval_question
from elmtune.evaluation.scoring import LoglikelihoodScorer, score_questions


@pytest.fixture(scope="module")
def questions(fixtures_dir):
    """Apple questions (long shared prompt, 2-5 choices) and lm-eval questions (short prompts, long choices, and
    WinoGrande's partial scoring where contexts differ and the continuation is shared)."""
    out = []
    for task in ("ARC-Easy", "boolq", "winogrande"):
        out += [
            apple_question(row, task) for row in load_rows(fixtures_dir / "llm_adapters" / task / "test.json", task)[:3]
        ]
    for task in ("hellaswag", "winogrande", "arc_easy"):
        rows = [json.loads(line) for line in (fixtures_dir / "lm_eval" / f"{task}.jsonl").read_text().splitlines()]
        out += [lmeval_question(LM_EVAL_TASKS[task], row, i) for i, row in enumerate(rows[:3])]
    return out


def _lls(scores):
    return [[s.loglikelihood for s in row] for row in scores]


def test_shared_prefix_scores_equal_naive_full_sequence_scores(tiny_model, tokenizer, questions, naive_scores):
    scores = score_questions(tiny_model, tokenizer, questions, batch_size=4, layout="shared")
    reference = naive_scores(questions)
    for got, want in zip(_lls(scores), reference, strict=True):
        assert got == pytest.approx(want, abs=2e-4, rel=1e-5)
    assert all(s.num_tokens > 0 for row in scores for s in row)


def test_scores_do_not_depend_on_batch_size_or_neighbours(tiny_model, tokenizer, questions):
    one = _lls(score_questions(tiny_model, tokenizer, questions, batch_size=1, layout="shared"))
    eight = _lls(score_questions(tiny_model, tokenizer, questions, batch_size=8, layout="shared"))
    full = _lls(score_questions(tiny_model, tokenizer, list(reversed(questions)), batch_size=3, layout="full"))[::-1]
    for a, b, c in zip(one, eight, full, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and a == pytest.approx(c, abs=1e-4)


def test_shared_row_layout_and_mask():
    # Two choices sharing the context [1, 5, 6]: inputs [1,5,6,7] and [1,5,6,8,9] (continuations [7,3] and [8,9,4]).
    requests = [EncodedRequest((1, 5, 6), (7, 3)), EncodedRequest((1, 5, 6), (8, 9, 4))]
    (row,) = plan_rows(requests, shared=True, max_length=64)
    assert row.tokens == (1, 5, 6, 7, 8, 9)
    assert row.positions == (0, 1, 2, 3, 3, 4)
    assert row.segments == (0, 0, 0, 1, 2, 2)
    # The first continuation token of both choices is predicted by the context's last token (row index 2).
    assert row.targets[0].positions == (2, 3) and row.targets[1].positions == (2, 4, 5)
    mask = shared_prefix_mask(torch.tensor([list(row.segments) + [-1]]))[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 1, 0, 0],  # choice 2 does not see choice 1
            [1, 1, 1, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],  # padding attends only to itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_left_truncation_follows_lm_eval(tiny_model, tokenizer):
    # lm-eval keeps the last max_length + 1 tokens of context + continuation and feeds all but the last.
    requests = [EncodedRequest(tuple(range(10, 30)), (40, 41)), EncodedRequest(tuple(range(10, 30)), (42,))]
    rows = plan_rows(requests, shared=True, max_length=8)
    assert [r.tokens for r in rows] == [tuple(range(23, 30)) + (40,), tuple(range(22, 30))]
    assert rows[0].targets[0].positions == (6, 7) and rows[1].targets[0].positions == (7,)


class _OutOfMemoryAboveTwoRows(torch.nn.Module):
    """Wraps a model and raises CUDA's out-of-memory error for batches of more than two rows."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.batches = []

    def forward(self, input_ids, **kwargs):
        self.batches.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return self.inner(input_ids=input_ids, **kwargs)


def test_auto_batch_size_backs_off_on_out_of_memory(tiny_model, tokenizer, questions):
    wrapped = _OutOfMemoryAboveTwoRows(tiny_model)
    scorer = LoglikelihoodScorer(wrapped, tokenizer, batch_size="auto", layout="shared", progress=False)
    scores = scorer.score(questions)
    assert max(wrapped.batches) > 2 and scorer.batcher.largest_batch == 2
    reference = _lls(score_questions(tiny_model, tokenizer, questions, batch_size="auto", layout="shared"))
    for got, want in zip(_lls(scores), reference, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    fixed = LoglikelihoodScorer(_OutOfMemoryAboveTwoRows(tiny_model), tokenizer, batch_size=4, layout="shared")
    with pytest.raises(ElmtuneError, match="out of memory at batch size 4"):
        fixed.score(questions)


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,  # far from uniform predictions, so a layout that leaks attention is visible
    )
    return LlamaForCausalLM(config).eval()


def test_generic_causal_lm_is_scored_correctly(tiny_llama, tokenizer, questions, naive_scores):
    scorer = LoglikelihoodScorer(tiny_llama, tokenizer, batch_size=4, progress=False)
    subset = [questions[0], *questions[-4:]]
    scores = scorer.score(subset)
    assert scorer.layout in ("shared", "full")  # decided by the probe
    for got, want in zip(_lls(scores), naive_scores(subset, model=tiny_llama), strict=True):
        assert got == pytest.approx(want, abs=2e-4, rel=1e-5)


class _IgnoresMasks(torch.nn.Module):
    """A causal LM that ignores attention masks and positions: the shared-prefix layout must be rejected."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_probe_falls_back_to_full_rows_when_the_layout_is_not_honoured(tiny_llama, tokenizer, questions, naive_scores):
    scorer = LoglikelihoodScorer(_IgnoresMasks(tiny_llama), tokenizer, batch_size=4, progress=False)
    apple = questions[:2]  # Apple's choices differ only in the last token: one plain row each, no decision needed
    scorer.score(apple)
    assert scorer.layout == "auto"
    scores = scorer.score(questions[-2:])  # lm-eval ARC: choice segments
    assert scorer.layout == "full"
    for got, want in zip(_lls(scores), naive_scores(questions[-2:], model=tiny_llama), strict=True):
        assert got == pytest.approx(want, abs=2e-4, rel=1e-5)


def test_a_question_needs_choices():
    with pytest.raises(ValueError, match="gold"):
        Question("t", 0, (("a", " b"),), 3, ("b",), (1,))


def test_batch_prefix_is_encoded_once_and_reused(tiny_model, tokenizer, fixtures_dir, naive_scores, monkeypatch):
    # Every Apple prompt starts with the same preamble: a batch of them encodes it once and reuses its KV cache.
    questions = [
        apple_question(row, task)
        for task in ("piqa", "openbookqa")
        for row in load_rows(fixtures_dir / "llm_adapters" / task / "test.json", task)[:2]
    ]
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=8, progress=False)
    prefixes = []
    original = scorer._prefix_cache

    def spy(row, prefix, copies):
        prefixes.append(prefix)
        return original(row, prefix, copies)

    monkeypatch.setattr(scorer, "_prefix_cache", spy)
    scores = scorer.score(questions)
    assert scorer.batcher.largest_batch == 4 and prefixes == [prefixes[0]] and prefixes[0] >= 30  # one batch
    for got, want in zip(_lls(scores), naive_scores(questions), strict=True):
        assert got == pytest.approx(want, abs=2e-4, rel=1e-5)
