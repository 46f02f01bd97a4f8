"""Every preference format skips and counts rows with an empty prompt, an empty reply or identical replies."""

import json

import pytest

from elmtune.datasets import DataConfig, DataSourceError, load_preference_examples, prepare_data
from elmtune.datasets.pair_drops import PairDrops


def _sharegpt(prompt, chosen, rejected):
    return {
        "conversations": [{"from": "human", "value": prompt}],
        "chosen": {"from": "gpt", "value": chosen},
        "rejected": {"from": "gpt", "value": rejected},
    }


def _h4(prompt, chosen, rejected):
    user = {"role": "user", "content": prompt}
    return {
        "prompt": prompt,
        "chosen": [user, {"role": "assistant", "content": chosen}],
        "rejected": [user, {"role": "assistant", "content": rejected}],
    }


def _raw(prompt, chosen, rejected):
    def completion(response, rating):
        aspects = ("helpfulness", "honesty", "instruction_following", "truthfulness")
        return {"response": response, "annotations": {a: {"Rating": rating, "Rationale": "."} for a in aspects}}

    return {"instruction": prompt, "completions": [completion(chosen, "5"), completion(rejected, "2")]}


LAYOUTS = {
    "preference": lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r},
    "h4 messages": _h4,
    "sharegpt_preference": _sharegpt,
    "alpaca_preference": lambda p, c, r: {"instruction": p, "input": "", "chosen": c, "rejected": r},
    "ultrafeedback_raw": _raw,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_empty_and_identical_sides_are_counted_and_skipped(layout, tmp_path, tokenizer):
    make = LAYOUTS[layout]
    rows = [
        make("Name a colour.", "Blue.", "Loud."),
        make("  ", "Blue.", "Loud."),  # an empty prompt
        make("Name a colour.", "Blue.", ""),  # an empty rejected reply
        make("Name a shape.", "A circle.", "A circle."),  # identical replies
        make("Name a fruit.", "An apple.", "A spoon."),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    data = prepare_data(DataConfig(path=str(path), max_length=128, max_prompt_length=64), tokenizer)
    load, tokens = data.load_report, data.tokenize_report
    if layout == "ultrafeedback_raw":  # an empty response is left out, which leaves one completion
        assert load.pair_drops == PairDrops(empty_prompt=1, too_few_completions=1, empty_responses=1)
        assert "1 with an empty prompt, 1 with fewer than two usable completions" in data.summary()
    else:
        assert load.pair_drops == PairDrops(empty_prompt=1, empty_reply=1)
        assert "2 preference rows skipped (1 with an empty prompt, 1 with an empty chosen" in data.summary()
    assert load.rows == 5 and load.valid == 3 and load.invalid == 0
    assert tokens.dropped_identical == 1 and tokens.kept == len(data.train) == 2
    assert "1 identical pairs skipped" in data.summary()


def test_a_source_with_no_usable_pair_says_why(tmp_path):
    path = tmp_path / "empty.jsonl"
    rows = [{"prompt": "Q", "chosen": "", "rejected": "B"}, {"prompt": "", "chosen": "A", "rejected": "B"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    reason = r"no valid rows \(0 invalid skipped; 2 preference rows skipped \(1 with an empty prompt, 1 with an empty"
    with pytest.raises(DataSourceError, match=reason):
        load_preference_examples(path)


def test_a_declared_format_must_be_a_preference_format(tmp_path):
    with pytest.raises(DataSourceError, match="'alpaca' is not a preference format"):
        load_preference_examples(tmp_path / "x.jsonl", "alpaca")
