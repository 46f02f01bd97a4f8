"""``--data`` resolution: LLM-Adapters directories, TASK=FILE, lm-eval file directories, aliases, clear errors;
questions are checked on construction."""

import pytest

from elmtune.evaluation import lmeval, protocols
from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.data import DataError, Question, load_rows, pick_tasks, read_rows, resolve_data


def test_llm_adapters_directory_gives_the_eight_tasks_in_apple_order(fixtures_dir):
    found = resolve_data([fixtures_dir / "llm_adapters"])
    chosen = pick_tasks(found, None, protocols.TASK_ALIASES, protocols.LLM_ADAPTERS_TASKS)
    assert list(chosen) == list(protocols.LLM_ADAPTERS_TASKS)
    assert chosen["ARC-Easy"] == fixtures_dir / "llm_adapters" / "ARC-Easy" / "test.json"


def test_aliases_and_task_equals_file(fixtures_dir):
    found = resolve_data([f"easy={fixtures_dir / 'llm_adapters' / 'ARC-Easy' / 'test.json'}"])
    assert list(found) == ["easy"]
    found = resolve_data([fixtures_dir / "llm_adapters" / "ARC-Easy" / "test.json"])  # task = folder name
    assert pick_tasks(found, ["arc_easy"], protocols.TASK_ALIASES, ()) == {"ARC-Easy": found["ARC-Easy"]}
    lm = resolve_data([fixtures_dir / "lm_eval"])
    chosen = pick_tasks(lm, ["ARC-Easy"], lmeval.TASK_ALIASES, ())
    assert list(chosen) == ["arc_easy"]


def test_missing_data_is_a_one_line_error(fixtures_dir, tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        resolve_data([tmp_path / "nope"])
    with pytest.raises(DataError, match="no data file for task 'piqa'"):
        pick_tasks(resolve_data([fixtures_dir / "mc"]), ["piqa"], {}, ())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match="not JSON or JSON Lines"):
        read_rows(bad)
    row_error = tmp_path / "rows.json"
    row_error.write_text('[{"instruction": "x"}]')
    with pytest.raises(DataError, match="missing answer"):
        load_rows(row_error, "boolq")


def test_an_empty_file_is_an_error_not_an_empty_result(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no questions"):
        protocols.run_mc(None, "empty", empty, EvalConfig(protocol="mc", data=(str(empty),)))


def test_a_question_needs_choices():
    with pytest.raises(ValueError, match="gold"):
        Question("t", 0, (("a", " b"),), 3, ("b",), (1,))
