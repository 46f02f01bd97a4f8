"""LLaMA-Factory's pairwise rows (ShareGPT and Alpaca layouts) load as pairs, following LLaMA-Factory's conventions."""

import json

import pytest

from elmtune.datasets import DataRowError, Message, detect_source_format, load_preference_examples
from elmtune.datasets.formats import detect_format

SAMPLE = "llamafactory_dpo_en_demo_first20.json"
# LLaMA-Factory's data/README.md: ShareGPT "from" tags human/gpt/system, written here independently of the code.
ROLE_OF = {"human": "user", "gpt": "assistant", "system": "system"}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_the_dpo_demo_sample_loads_with_its_conversations_as_prompts(data_dir):
    path = data_dir / SAMPLE
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert detect_source_format(path) == "sharegpt_preference"
    pairs, report = load_preference_examples(path)
    assert report.format == "sharegpt_preference" and report.rows == report.valid == len(pairs) == 20
    for pair, row in zip(pairs, raw, strict=True):
        expected = tuple(Message(ROLE_OF[turn["from"]], turn["value"]) for turn in row["conversations"])
        assert pair.prompt == expected
        assert (pair.chosen, pair.rejected) == (row["chosen"]["value"], row["rejected"]["value"])
    turns = [len(pair.prompt) for pair in pairs]
    assert turns.count(5) == 4 and turns.count(7) == 1  # the multi-turn rows keep every earlier turn
    assert [pair.prompt[0].role for pair in pairs].count("system") == 4
    assert pairs[4].prompt[1] == Message("assistant", raw[4]["conversations"][1]["value"])


def test_a_top_level_system_field_becomes_the_system_turn(tmp_path):
    row = {
        "conversations": [{"from": "human", "value": "Hi"}],
        "chosen": {"from": "gpt", "value": "Hello!"},
        "rejected": {"from": "gpt", "value": "Go away."},
        "system": "Be kind.",
    }
    inner = {**row, "conversations": [{"from": "system", "value": "Be brief."}, *row["conversations"]]}
    blank = {**row, "system": ""}
    pairs, _ = load_preference_examples(_write_jsonl(tmp_path / "p.jsonl", [row, inner, blank]))
    assert pairs[0].prompt == (Message("system", "Be kind."), Message("user", "Hi"))
    assert pairs[1].prompt == (Message("system", "Be brief."), Message("user", "Hi"))  # the conversation's wins
    assert pairs[2].prompt == (Message("user", "Hi"),)  # a blank system prompt is left out


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "function_call", "value": "{}"}]},
            r"conversations\[1\] is a 'function_call' turn; tool turns are not supported",
        ),
        ({"conversations": [{"from": "observation", "value": "42"}]}, r"conversations\[0\] is a 'observation' turn"),
        ({"conversations": [{"from": "bot", "value": "Q"}]}, r"conversations\[0\] is from 'bot'; expected one of"),
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "system", "value": "S"}]},
            r"conversations\[1\] is a system turn after the first position",
        ),
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q2"}]},
            r"conversations\[1\] is from 'human' where a 'gpt' turn is expected",
        ),
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
            "field 'conversations' must end with a 'human' turn",
        ),
        ({"conversations": "Q"}, "field 'conversations' must be a list of turns, got str"),
        ({"conversations": [{"from": "human", "value": 3}]}, r"conversations\[0\].value must be a string, got int"),
        ({"chosen": {"from": "human", "value": "A"}}, "field 'chosen' is from 'human'; the compared replies"),
        ({"rejected": "A"}, "rejected must be an object with 'from' and 'value', got str"),
        ({"rejected": None}, "field 'rejected' is missing"),
    ],
)
def test_sharegpt_errors_are_one_line_naming_row_and_field(tmp_path, change, reason):
    good = {
        "conversations": [{"from": "human", "value": "Q"}],
        "chosen": {"from": "gpt", "value": "A"},
        "rejected": {"from": "gpt", "value": "B"},
    }
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, {**good, **change}])
    with pytest.raises(DataRowError, match="bad.jsonl, line 2: " + reason) as info:
        load_preference_examples(path)
    assert "\n" not in str(info.value)
    assert load_preference_examples(path, skip_invalid=True)[1].invalid == 1


def test_alpaca_pairs_join_instruction_and_input_after_the_history(tmp_path):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "6"},
        {"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "Loud."},
        {
            "instruction": "And in German?",
            "chosen": "Hallo.",
            "rejected": "Bonjour.",
            "system": "You translate.",
            "history": [["Say hello in French.", "Bonjour."], ["In Spanish?", "Hola."]],
        },
    ]
    path = _write_jsonl(tmp_path / "alpaca.jsonl", rows)
    assert detect_source_format(path) == "alpaca_preference"
    pairs, report = load_preference_examples(path)
    assert report.format == "alpaca_preference" and report.valid == 3
    assert pairs[0].prompt == (Message("user", "Add the numbers.\n2 and 3"),)  # LLaMA-Factory: "prompt\nquery"
    assert pairs[1].prompt == (Message("user", "Name a colour."),)
    assert pairs[2].prompt == (
        Message("system", "You translate."),
        Message("user", "Say hello in French."),
        Message("assistant", "Bonjour."),
        Message("user", "In Spanish?"),
        Message("assistant", "Hola."),
        Message("user", "And in German?"),
    )
    assert [(p.chosen, p.rejected) for p in pairs] == [("5", "6"), ("Blue.", "Loud."), ("Hallo.", "Bonjour.")]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"history": [["only a question"]]}, r"history\[0\] must be a \[question, answer\] pair of strings"),
        ({"history": "earlier"}, "field 'history' must be a list of"),
        ({"chosen": ["A"]}, "field 'chosen' must be a string, got list"),
        ({"system": 1}, "field 'system' must be a string, got int"),
    ],
)
def test_alpaca_pair_errors_name_the_field(tmp_path, change, reason):
    good = {"instruction": "Q", "chosen": "A", "rejected": "B"}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, {**good, **change}])
    with pytest.raises(DataRowError, match="bad.jsonl, line 2: " + reason):
        load_preference_examples(path)


def test_detection_tells_the_preference_layouts_apart():
    pair = {"chosen": "A", "rejected": "B"}
    assert detect_format({**pair, "prompt": "Q"}) == "preference"
    assert detect_format({**pair, "conversations": []}) == "sharegpt_preference"
    assert detect_format({**pair, "instruction": "Q", "input": ""}) == "alpaca_preference"
    assert detect_format({**pair, "instruction": "Q", "prompt": "Q"}) == "preference"  # TRL/argilla layouts
    assert detect_format({"instruction": "Q", "completions": []}) == "ultrafeedback_raw"
    assert detect_format({"instruction": "Q", "output": "A"}) == "alpaca"
