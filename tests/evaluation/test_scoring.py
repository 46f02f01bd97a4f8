"""The fast scorer: shared-prefix and packed scores equal naive full-sequence scores, do not depend on the batch, back
off on out-of-memory, and fall back to full rows for models that cannot take the shared-prefix layout."""

import json

import pytest
import torch

from elmtune.errors import ElmtuneError
from elmtune.evaluation import scoring
from elmtune.evaluation.data import load_rows
from elmtune.evaluation.lmeval import LM_EVAL_TASKS, lmeval_question
from elmtune.evaluation.protocols import apple_question
from elmtune.evaluation.rows import PACK_TOKENS, pack_rows
from elmtune.evaluation.scoring import LoglikelihoodScorer, score_questions, supports_shared_prefix


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


@pytest.fixture(scope="module")
def questions_mixed(fixtures_dir):
    """Apple questions (one context row each, long shared preamble) and lm-eval ones (choice segments)."""
    out = [apple_question(row, "piqa") for row in load_rows(fixtures_dir / "llm_adapters/piqa/test.json", "piqa")[:4]]
    rows = [json.loads(line) for line in (fixtures_dir / "lm_eval/arc_easy.jsonl").read_text().splitlines()[:4]]
    return out + [lmeval_question(LM_EVAL_TASKS["arc_easy"], row, i) for i, row in enumerate(rows)]


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


def test_packed_scores_equal_unpacked_and_naive(tiny_model, tokenizer, questions_mixed, naive_scores, monkeypatch):
    rows_per_pack = []

    def spy(rows, prefix, pad_id, capacity=PACK_TOKENS):
        packed = pack_rows(rows, prefix, pad_id, capacity=200)  # small packs: several sequences per batch
        rows_per_pack.extend(int(len(set(o.tolist()) - {-1})) for o in packed.owner)
        return packed

    monkeypatch.setattr(scoring, "pack_rows", spy)
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=8, progress=False)
    packed = [[s.loglikelihood for s in row] for row in scorer.score(questions_mixed)]
    assert max(rows_per_pack) >= 2 and len(rows_per_pack) > len(questions_mixed) / 8
    monkeypatch.undo()
    one = _lls(score_questions(tiny_model, tokenizer, questions_mixed, batch_size=1))
    for got, alone, want in zip(packed, one, naive_scores(questions_mixed), strict=True):
        assert got == pytest.approx(want, abs=2e-4, rel=1e-5) and got == pytest.approx(alone, abs=1e-4)


def test_fast_path_only_for_adapters_inside_the_layers():
    # LoRA lives inside OpenELM's layers: the decoder can be called directly. Prompt tuning adds virtual tokens in the
    # peft wrapper: the model is treated as unknown (probed, scored through the wrapper).
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from elmtune.models import OpenELMConfig, OpenELMForCausalLM

    config = OpenELMConfig.from_preset("tiny")
    lora = get_peft_model(OpenELMForCausalLM(config), LoraConfig(target_modules=["qkv_proj"], r=2))
    prompt = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=4,
        token_dim=config.model_dim,
        num_layers=config.num_transformer_layers,
        num_attention_heads=4,
    )
    assert supports_shared_prefix(lora) is True
    assert supports_shared_prefix(get_peft_model(OpenELMForCausalLM(config), prompt)) is None
