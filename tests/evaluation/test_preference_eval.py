"""The preference protocol against a plain reference loop: one unbatched forward per sequence, peft's own loader for
the tuned side, the bare base for the reference, target-token log-probs summed by hand."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from elmtune.datasets.loading import load_preference_examples
from elmtune.datasets.preference import PreferenceTokenizeConfig, tokenize_preference
from elmtune.errors import UsageError
from elmtune.evaluation import EvalConfig, ModelSpec, PreferenceSettings, load_for_eval, run_eval, score_pairs
from elmtune.evaluation.preference import (
    ScoredPair,
    SideLogps,
    preference_metrics,
    read_preference_sources,
    tokenize_source,
)
from elmtune.models import load_model
from elmtune.models.finite import NonFiniteError

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"
BETA = 0.2
PAIRS = [
    {"prompt": "What colour is the sky?", "chosen": "Blue, on a clear day.", "rejected": "Green."},
    {"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Nine, which is a prime number."},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "Hello!"},  # identical: skipped and counted
    {"prompt": "Count to three.", "chosen": "One, two, three.", "rejected": ""},  # empty side: skipped and counted
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "22"},
    {"prompt": "Give me a fruit, please.", "chosen": "An apple.", "rejected": "A carrot, which is a fruit."},
    {"prompt": "Is water wet?", "chosen": "Yes, water makes things wet.", "rejected": "No."},
]


@pytest.fixture(scope="module")
def checkpoints(make_tiny, trained_adapter, tmp_path_factory):
    """A tiny base directory, a saved adapter whose B is far from zero, and a JSONL file of pairs."""
    root = tmp_path_factory.mktemp("preference")
    make_tiny().save_pretrained(root / "base")
    targets = ("qkv_proj", "out_proj", "proj_1", "proj_2")
    adapter = trained_adapter(root / "base", root / "adapter", r=4, alpha=8, dropout=0.0, targets=targets, scale=0.3)
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return root / "base", adapter, pairs


def _summed_target_logp(model, ids, labels) -> float:
    """log p(targets) of one sequence from one unpadded forward pass, summed token by token in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids.tolist()])).logits[0].double()  # (L, V)
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[t - 1, int(labels[t])]) for t in range(1, len(ids)) if labels[t] != -100)


def _reference(base_dir, adapter, source, tokenizer, settings, data_format="auto", limit=None):
    """Per pair ``(tuned chosen, tuned rejected, base chosen, base rejected)`` log-probs from the plain loop."""
    examples, _ = load_preference_examples(str(source), data_format, limit=limit)
    config = PreferenceTokenizeConfig(settings.max_length, settings.max_prompt_length, settings.data_template)
    pairs, _ = tokenize_preference(examples, tokenizer, config)
    base = load_model(base_dir).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = PeftModel.from_pretrained(load_model(base_dir), str(adapter)).eval()
    out = []
    for pair in pairs:
        sides = [(pair.chosen_input_ids, pair.chosen_labels), (pair.rejected_input_ids, pair.rejected_labels)]
        tuned_logps = [_summed_target_logp(tuned, ids, labels) for ids, labels in sides]
        base_logps = [_summed_target_logp(base, ids, labels) for ids, labels in sides]
        out.append((*tuned_logps, *base_logps))
    return out


def _tokenized(pairs_file, tokenizer):
    (source,) = read_preference_sources(EvalConfig(protocol="preference", data=(str(pairs_file),)))
    return tokenize_source(source, tokenizer, PreferenceSettings())


def _mean(values):
    return sum(values) / len(values)


def _win_share(chosen, rejected):
    """Share of pairs with chosen strictly above rejected."""
    return _mean([float(c > r) for c, r in zip(chosen, rejected, strict=True)])


def _mean_margin(chosen, rejected):
    return _mean([c - r for c, r in zip(chosen, rejected, strict=True)])


@pytest.mark.parametrize(
    ("source", "data_format", "settings", "limit", "skipped"),
    [
        ("pairs", "auto", PreferenceSettings(beta=BETA), None, {"empty_reply": 1, "identical": 1}),
        (
            DATA / "llamafactory_dpo_en_demo_first20.json",
            "sharegpt_preference",
            PreferenceSettings(beta=BETA, data_format="sharegpt_preference", max_length=48, max_prompt_length=24),
            3,
            {},
        ),
    ],
    ids=["trl-jsonl-with-skipped-rows", "llamafactory-truncated"],
)
def test_rewards_accuracies_and_margins_match_a_plain_loop(
    checkpoints, tokenizer, tmp_path, source, data_format, settings, limit, skipped
):
    base_dir, adapter, pairs_file = checkpoints
    source = pairs_file if source == "pairs" else source
    config = EvalConfig(
        protocol="preference", data=(str(source),), limit=limit, batch_size=4, preference=settings, progress=False
    )
    report = run_eval(ModelSpec(str(base_dir), adapter=adapter), config, output_dir=tmp_path / "out")

    expected = _reference(base_dir, adapter, source, tokenizer, settings, data_format, limit)
    tc, tr, bc, br = (list(column) for column in zip(*expected, strict=True))
    reward_c = [BETA * (t - b) for t, b in zip(tc, bc, strict=True)]
    reward_r = [BETA * (t - b) for t, b in zip(tr, br, strict=True)]
    assert max(abs(r) for r in reward_c + reward_r) > 1e-2  # the adapter moves the log-probs

    (tuned,) = report.results.tasks
    (base,) = report.baseline.tasks
    value = {m.metric: m.value for m in tuned.metrics}
    assert value["rewards/accuracies"] == _win_share(reward_c, reward_r)
    assert value["rewards/margins"] == pytest.approx(_mean_margin(reward_c, reward_r), abs=1e-5)
    assert value["rewards/chosen"] == pytest.approx(_mean(reward_c), abs=1e-5)
    assert value["rewards/rejected"] == pytest.approx(_mean(reward_r), abs=1e-5)
    assert value["logps/accuracies"] == _win_share(tc, tr)
    assert value["logps/margins"] == pytest.approx(_mean_margin(tc, tr), abs=1e-4)
    assert value["logps/chosen"] == pytest.approx(_mean(tc), abs=1e-4)
    base_value = {m.metric: m.value for m in base.metrics}
    assert set(base_value) == {"logps/accuracies", "logps/margins", "logps/chosen", "logps/rejected"}
    assert base_value["logps/accuracies"] == _win_share(bc, br)
    assert base_value["logps/margins"] == pytest.approx(_mean_margin(bc, br), abs=1e-4)
    assert base_value["logps/rejected"] == pytest.approx(_mean(br), abs=1e-4)
    assert {m.n for m in tuned.metrics + base.metrics} == {len(expected)}
    assert tuned.details["skipped"] == skipped and tuned.details["pairs"] == len(expected)

    lines = (tmp_path / "out" / "examples" / f"{tuned.task}.jsonl").read_text().splitlines()
    examples = [json.loads(line) for line in lines]
    keys = ("tuned_chosen_logp", "tuned_rejected_logp", "base_chosen_logp", "base_rejected_logp")
    got = [example[key] for example in examples for key in keys]
    assert got == pytest.approx([value for pair in expected for value in pair], abs=1e-4)
    assert [e["reward_chosen"] for e in examples] == pytest.approx(reward_c, abs=1e-5)
    assert [e["reward_rejected"] for e in examples] == pytest.approx(reward_r, abs=1e-5)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {row["metric"] for row in saved["baseline"]["results"]} == set(base_value)
    assert saved["protocol"] == "preference" and saved["results"][0]["details"]["beta"] == BETA


def test_batch_size_does_not_change_the_numbers(checkpoints):
    base_dir, adapter, pairs_file = checkpoints
    model, tokenizer = load_for_eval(ModelSpec(str(base_dir), adapter=adapter), device="cpu")
    data = _tokenized(pairs_file, tokenizer)
    assert len({len(pair) for pair in data.pairs}) > 1  # batches of 4 hold padding
    one, four, auto = (score_pairs(model, data.pairs, size) for size in (1, 4, "auto"))
    flat = [
        [v for tuned, base in run for v in (tuned.chosen, tuned.rejected, base.chosen, base.rejected)]
        for run in (one, four, auto)
    ]
    # 1e-6 relative: the sums are fp32 (one ulp at -90 is 7.6e-6), padding changes kernel shapes by an ulp at most
    assert flat[1] == pytest.approx(flat[0], rel=1e-6, abs=1e-6)
    assert flat[2] == pytest.approx(flat[0], rel=1e-6, abs=1e-6)


def test_a_tie_is_not_a_win():
    """Hand-computed: rewards and log-probs that tie count as losses, as TRL's ``chosen > rejected``."""
    pairs = [
        ScoredPair(0, "a", False, tuned=SideLogps(-10.0, -12.0), base=SideLogps(-11.0, -11.0)),
        ScoredPair(1, "b", False, tuned=SideLogps(-5.0, -7.0), base=SideLogps(-5.0, -7.0)),
        ScoredPair(2, "c", False, tuned=SideLogps(-8.0, -6.0), base=SideLogps(-9.0, -4.0)),
    ]
    tuned, base = preference_metrics(pairs, beta=0.5)
    value = {m.metric: m.value for m in tuned}
    # rewards: (0.5, -0.5), (0, 0), (0.5, -1.0) -> wins 1, tie, 1; margins 1.0, 0.0, 1.5
    assert value["rewards/accuracies"] == pytest.approx(2 / 3)
    assert value["rewards/margins"] == pytest.approx(2.5 / 3)
    assert value["rewards/chosen"] == pytest.approx(1.0 / 3) and value["rewards/rejected"] == pytest.approx(-1.5 / 3)
    assert value["logps/accuracies"] == pytest.approx(2 / 3) and value["logps/margins"] == pytest.approx(2 / 3)
    base_value = {m.metric: m.value for m in base}
    # base margins: 0 (a tie), 2, -5 -> one win in three
    assert base_value["logps/accuracies"] == pytest.approx(1 / 3) and base_value["logps/margins"] == pytest.approx(-1)
    stderr = next(m.stderr for m in tuned if m.metric == "rewards/accuracies")
    assert stderr == pytest.approx(math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2) / math.sqrt(3))


def test_the_table_shows_the_base_rewards_as_not_applicable(checkpoints, tmp_path):
    base_dir, adapter, pairs_file = checkpoints
    config = EvalConfig(protocol="preference", data=(f"held_out={pairs_file}",), batch_size=2, progress=False)
    table = run_eval(ModelSpec(str(base_dir), adapter=adapter), config).markdown()
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| held_out |")}
    assert list(rows) == [
        "rewards/accuracies",
        "rewards/margins",
        "rewards/chosen",
        "rewards/rejected",
        "logps/accuracies",
        "logps/margins",
        "logps/chosen",
        "logps/rejected",
    ]
    assert "| n/a | n/a | 5 | preference | 0 | yes |" in rows["rewards/margins"]
    assert "n/a" not in rows["logps/margins"]
    assert "held_out: 5 pairs evaluated, 2 skipped (1 empty reply, 1 identical), 0 truncated" in table


def test_needs_an_adapter_and_compares_with_the_base_only(checkpoints):
    base_dir, adapter, pairs_file = checkpoints
    config = EvalConfig(protocol="preference", data=(str(pairs_file),))
    with pytest.raises(UsageError, match="give --adapter"):
        run_eval(ModelSpec(str(base_dir)), config)
    with pytest.raises(UsageError, match="leave out --compare"):
        run_eval(ModelSpec(str(base_dir), adapter=adapter), config, compare=ModelSpec("tiny"))


def test_non_finite_log_probs_stop_the_evaluation(checkpoints):
    base_dir, adapter, pairs_file = checkpoints
    model, tokenizer = load_for_eval(ModelSpec(str(base_dir), adapter=adapter), device="cpu")
    data = _tokenized(pairs_file, tokenizer)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="pairs.jsonl, line"):
        score_pairs(model, data.pairs, 2)
