"""Packing rows into padding-free sequences: first-fit assignment, the mask, and scores equal to unpacked ones."""

import json

import pytest
import torch

from elmtune.evaluation import packing, scoring
from elmtune.evaluation.commonsense import apple_question, load_rows
from elmtune.evaluation.encoding import EncodedRequest
from elmtune.evaluation.layout import plan_rows
from elmtune.evaluation.lmeval_tasks import LM_EVAL_TASKS, lmeval_question
from elmtune.evaluation.packing import assign_packs, pack_rows, packed_mask
from elmtune.evaluation.scoring import LoglikelihoodScorer, score_questions


@pytest.fixture(scope="module")
def questions_mixed(fixtures_dir):
    """Apple questions (one context row each, long shared preamble) and lm-eval ones (choice segments)."""
    out = [apple_question(row, "piqa") for row in load_rows(fixtures_dir / "llm_adapters/piqa/test.json", "piqa")[:4]]
    rows = [json.loads(line) for line in (fixtures_dir / "lm_eval/arc_easy.jsonl").read_text().splitlines()[:4]]
    return out + [lmeval_question(LM_EVAL_TASKS["arc_easy"], row, i) for i, row in enumerate(rows)]


def test_packs_are_few_and_balanced():
    # 14 tokens at capacity 7: two packs. Longest first into the least-filled pack: 5 -> 0, 4 -> 1, 3 -> 1, 2 -> 0.
    assert assign_packs([5, 3, 4, 2], capacity=7) == [[0, 3], [2, 1]]
    # Balanced, not filled in turn (which would give 3 + 3 + 3 and a lone 3 padded to 9): both packs hold 6.
    assert assign_packs([3, 3, 3, 3], capacity=10) == [[0, 2], [1, 3]]
    assert assign_packs([9, 1], capacity=7) == [[0], [1]]  # an item over capacity
    assert assign_packs([2, 2], capacity=512) == [[0, 1]]


def test_packed_rows_and_mask():
    # Row 0: context [1, 5, 6] with choices [7] and [8, 9]; row 1: context [1, 5, 4] with one choice [3].
    row0 = plan_rows(
        [EncodedRequest((1, 5, 6), (7, 2)), EncodedRequest((1, 5, 6), (8, 9, 2))], shared=True, max_length=64
    )
    row1 = plan_rows([EncodedRequest((1, 5, 4), (3, 2))], shared=True, max_length=64)
    packed = pack_rows([row0[0], row1[0]], prefix=2, pad_id=0, capacity=16)
    assert packed.input_ids.tolist() == [[6, 7, 8, 9, 4, 3]]
    assert packed.position_ids.tolist() == [[2, 3, 3, 4, 2, 3]]
    assert packed.owner.tolist() == [[0, 0, 0, 0, 1, 1]]
    assert packed.segments.tolist() == [[0, 1, 2, 2, 0, 0]]
    assert packed.locate(1, 3) == (0, 5)
    mask = packed_mask(packed.owner, packed.segments, prefix=2)[0, 0].int()
    expected = [
        # prefix | 6  7  8  9  4  3
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0, 0, 0],  # choice 2 does not see choice 1
        [1, 1, 1, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 0],  # row 1 sees the shared prefix, not row 0
        [1, 1, 0, 0, 0, 0, 1, 1],
    ]
    assert mask.tolist() == expected


def test_padding_attends_only_to_itself():
    owner = torch.tensor([[0, 0, -1]])
    mask = packed_mask(owner, torch.tensor([[0, 0, -1]]), prefix=1)[0, 0].int()
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]


def test_packed_scores_equal_unpacked_and_naive(tiny_model, tokenizer, questions_mixed, naive_scores, monkeypatch):
    rows_per_pack = []
    original = packing.pack_rows

    def spy(rows, prefix, pad_id, capacity=packing.PACK_TOKENS):
        packed = original(rows, prefix, pad_id, capacity=200)  # small packs: several sequences per batch
        rows_per_pack.extend(int(len(set(o.tolist()) - {-1})) for o in packed.owner)
        return packed

    monkeypatch.setattr(scoring, "pack_rows", spy)
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=8, progress=False)
    packed = [[s.loglikelihood for s in row] for row in scorer.score(questions_mixed)]
    assert max(rows_per_pack) >= 2 and len(rows_per_pack) > len(questions_mixed) / 8
    monkeypatch.undo()
    one = [
        [s.loglikelihood for s in row] for row in score_questions(tiny_model, tokenizer, questions_mixed, batch_size=1)
    ]
    for got, alone, want in zip(packed, one, naive_scores(questions_mixed), strict=True):
        assert got == pytest.approx(want, abs=2e-4, rel=1e-5) and got == pytest.approx(alone, abs=1e-4)


def test_fast_path_only_for_adapters_inside_the_layers():
    # LoRA lives inside OpenELM's layers: the decoder can be called directly. Prompt tuning adds virtual tokens in the
    # peft wrapper: the model is treated as unknown (probed, scored through the wrapper).
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    from elmtune.evaluation.scoring import supports_shared_prefix
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
