"""Raw UltraFeedback rows are binarised as HuggingFaceH4 did: best mean rating chosen, a seeded lower one rejected."""

import json
import os
import subprocess
import sys

import pytest

from elmtune.datasets import DataRowError, detect_source_format, load_preference_examples
from elmtune.datasets.pair_drops import PairDrops

RAW = "ultrafeedback_raw_handmade.jsonl"
# The hand-made rows (see tests/fixtures/data/SOURCE.md), with each completion's mean rating worked out by hand.
JUPITER = "Jupiter is the largest planet of the solar system."  # row 1: 4.75 = (5 + 5 + 4 + 5) / 4
ROW1_LOWER = {
    "The largest planet is Saturn, I think, or maybe Jupiter.": 3.0,
    "Saturn.": 2.5,  # (2 + 3 + 3 + 2) / 4
    "Planets are round.": 1.0,
}
EXPECTED_FIXED = {  # rows whose rejected reply has a single candidate: (chosen, rejected, score_chosen, score_rejected)
    "Translate 'good morning' into French.": ("Bonjour.", "Bonne nuit.", 4.5, 3.0),  # first of the two 4.5s wins
    "Do goldfish have a three-second memory?": (
        "No, goldfish remember things for months.",  # mean(5, 3) = 4.0, N/A left out (2.0 if N/A counted as 0)
        "Their memory lasts longer than three seconds, probably.",  # (4 + 4 + 4 + 3) / 4 = 3.75
        4.0,
        3.75,
    ),
    "What is 7 times 8?": ("7 times 8 is 56.", "54", 3.0, 2.0),  # the empty 5.0 response is left out
}


def _by_instruction(pairs):
    return {pair.prompt[-1].content: pair for pair in pairs}


def test_binarised_pairs_and_counts_match_the_hand_computed_ones(data_dir):
    path = data_dir / RAW
    assert detect_source_format(path) == "ultrafeedback_raw"
    pairs, report = load_preference_examples(path)
    assert report.format == "ultrafeedback_raw" and report.rows == 8 and report.valid == len(pairs) == 4
    assert report.pair_drops == PairDrops(
        empty_prompt=1, no_lower_rated=1, too_few_completions=2, empty_responses=2, unrated_responses=1
    )
    assert [pair.where.rsplit(" ", 1)[-1] for pair in pairs] == ["1", "2", "4", "6"]  # source order, by line
    found = _by_instruction(pairs)
    first = found["Name the largest planet of the solar system."]
    assert first.chosen == JUPITER and first.score_chosen == 4.75
    assert first.rejected in ROW1_LOWER and first.score_rejected == ROW1_LOWER[first.rejected]
    for instruction, (chosen, rejected, score_chosen, score_rejected) in EXPECTED_FIXED.items():
        pair = found[instruction]
        assert len(pair.prompt) == 1 and pair.prompt[0].role == "user"
        assert (pair.chosen, pair.rejected, pair.score_chosen, pair.score_rejected) == (
            chosen,
            rejected,
            score_chosen,
            score_rejected,
        )


def test_the_draw_is_seeded_and_independent_of_row_order(data_dir, tmp_path):
    lines = (data_dir / RAW).read_text(encoding="utf-8").splitlines()
    backwards = tmp_path / "backwards.jsonl"
    backwards.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    drawn = {}
    for seed in range(24):
        forward = _by_instruction(load_preference_examples(data_dir / RAW, seed=seed)[0])
        reverse = _by_instruction(load_preference_examples(backwards, seed=seed)[0])
        assert {k: (p.chosen, p.rejected) for k, p in forward.items()} == {
            k: (p.chosen, p.rejected) for k, p in reverse.items()
        }
        drawn[seed] = forward["Name the largest planet of the solar system."].rejected
    assert set(drawn.values()) == set(ROW1_LOWER)  # every strictly lower completion can be drawn, none other
    again = {seed: load_preference_examples(data_dir / RAW, seed=seed)[0][0].rejected for seed in (0, 1, 2)}
    assert again == {seed: drawn[seed] for seed in (0, 1, 2)}


def test_the_draw_is_the_same_in_a_fresh_process(data_dir):
    code = (
        "import sys; from elmtune.datasets import load_preference_examples as load; "
        "print(load(sys.argv[1], seed=5)[0][0].rejected)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(data_dir / RAW)], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == load_preference_examples(data_dir / RAW, seed=5)[0][0].rejected


def _raw_row(**completion_changes):
    ratings = {a: {"Rating": "4", "Rationale": "..."} for a in ("helpfulness", "honesty", "truthfulness")}
    best = {**ratings, "instruction_following": {"Rating": "5"}}
    good = {"model": "m", "response": "An answer.", "annotations": best}
    low = {**good, "response": "Worse.", "annotations": {**ratings, "instruction_following": {"Rating": "1"}}}
    return {"instruction": "Q?", "completions": [{**good, **completion_changes}, low]}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (_raw_row(annotations={"honesty": {"Rating": "five"}}), r"completions\[0\].annotations.honesty.Rating must be"),
        (_raw_row(annotations={"honesty": "5"}), r"completions\[0\].annotations.honesty must be an object with"),
        (_raw_row(annotations=None), r"completions\[0\].annotations must be an object of per-aspect ratings"),
        (_raw_row(response=None), r"completions\[0\].response must be a string, got null"),
        ({"instruction": "Q?", "completions": "A"}, "field 'completions' must be a list of completions, got str"),
        ({"instruction": 3, "completions": []}, "field 'instruction' must be a string, got int"),
    ],
)
def test_malformed_raw_rows_are_errors_naming_the_field(tmp_path, row, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_raw_row()) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataRowError, match="bad.jsonl, line 2: " + reason):
        load_preference_examples(path, "ultrafeedback_raw")


def test_numeric_ratings_and_list_wrapped_aspects_read_like_strings(tmp_path):
    row = _raw_row(annotations={"helpfulness": [{"Rating": 5}], "honesty": {"Rating": 4.0}})
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (pair,), _ = load_preference_examples(path)
    assert (pair.chosen, pair.score_chosen, pair.rejected, pair.score_rejected) == ("An answer.", 4.5, "Worse.", 3.25)
