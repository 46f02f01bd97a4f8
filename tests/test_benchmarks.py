"""``benchmarks/run.py``: each side in its own process; rows printed, stored and rendered as the README table."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from suite.harness import Group, Pick, Row, Side, Target, row_result, run_group  # noqa: E402
from suite.report import END, START, update_readme  # noqa: E402
from suite.settings import Settings  # noqa: E402
from suite.shapes import base_matmul_weights, llama_shape, preset_geometry, training_flops_per_token  # noqa: E402


def _rounds(values: dict[str, list[float]]) -> list[dict[str, dict]]:
    count = len(next(iter(values.values())))
    return [{side: {"metrics": {"x": v[i], "n": 10.0}, "info": {}} for side, v in values.items()} for i in range(count)]


def test_a_row_reports_best_and_median_of_each_side_and_the_ratio_of_the_bests():
    rounds = _rounds({"fast": [2.0, 1.0, 4.0], "slow": [3.0, 5.0, 4.0]})
    lower = row_result(
        Row("t", "time", Pick("fast", "x"), Pick("slow", "x"), "s", False, Target("<=", 0.5)), rounds, {}
    )
    assert lower["a"]["best"] == 1.0 and lower["a"]["median"] == 2.0 and lower["b"]["best"] == 3.0
    assert lower["ratio"] == pytest.approx(1 / 3) and lower["target_met"] is True
    higher = row_result(
        Row("s", "speed", Pick("fast", "x"), Pick("slow", "x"), "t/s", True, Target(">=", 1.0)), rounds, {}
    )
    assert higher["a"]["best"] == 4.0 and higher["b"]["best"] == 5.0 and higher["ratio"] == pytest.approx(0.8)
    assert higher["target_met"] is False


def _side(name: str, seconds: str, trail: Path) -> Side:
    """A side whose process appends its name and pid to ``trail`` and reports ``seconds`` (a value per call)."""
    code = (
        "import json, os, sys; trail = open(sys.argv[1], 'a'); trail.write(f'{sys.argv[2]} {os.getpid()}\\n'); "
        "trail.close(); n = sum(1 for _ in open(sys.argv[1])); "
        "print(json.dumps({'metrics': {'s': float(sys.argv[3].split(',')[(n - 1) // 2])}}))"
    )
    return Side(name, command=(sys.executable, "-c", code, str(trail), name, seconds))


def test_sides_run_interleaved_each_in_a_fresh_process(tmp_path):
    trail = tmp_path / "trail.txt"
    row = Row("r", "time", Pick("a", "s"), Pick("b", "s"), "s", False, Target("<=", 1.0))
    group = Group("g", [_side("a", "3,2", trail), _side("b", "4,8", trail)], [row])
    (result,) = run_group(group, Settings(), rounds=2, log=lambda _: None)
    runs = [line.split() for line in trail.read_text().splitlines()]
    assert [name for name, _ in runs] == ["a", "b", "a", "b"] and len({pid for _, pid in runs}) == 4
    assert result["a"]["values"] == [3.0, 2.0] and result["b"]["values"] == [4.0, 8.0]
    assert result["ratio"] == pytest.approx(2.0 / 4.0) and result["a"]["median"] == 2.5 and result["target_met"]


def test_a_capped_group_runs_once_and_quick_arguments_reach_only_quick_runs(tmp_path):
    trail = tmp_path / "trail.txt"
    side = _side("a", "5,6,7", trail)
    group = Group("g", [side], [Row("r", "time", Pick("a", "s"), Pick("a", "s"), "s", False)], max_rounds=1)
    (result,) = run_group(group, Settings(), rounds=3, log=lambda _: None)
    assert len(trail.read_text().splitlines()) == 1 and result["a"]["values"] == [5.0]
    flagged = Side("p", command=("prog", "--side"), quick_args=("--quick",))
    assert flagged.argv(Settings()) == ["prog", "--side"]
    assert flagged.argv(Settings().quick()) == ["prog", "--side", "--quick"]


def test_a_skipped_side_never_runs_and_only_the_rows_reading_it_are_skipped_naming_it(tmp_path):
    trail = tmp_path / "trail.txt"
    kept = Row("kept", "time", Pick("a", "s"), Pick("b", "s"), "s", False)
    dropped = Row("dropped", "time", Pick("a", "s"), Pick("c", "s"), "s", False, Target("<=", 1.0))
    sides = [_side("a", "3", trail), _side("b", "4", trail), _side("c", "5", trail)]
    group = Group("g", sides, [kept, dropped])
    ran, skipped = run_group(group, Settings(), rounds=1, log=lambda _: None, skip=frozenset({"c"}))
    assert [line.split()[0] for line in trail.read_text().splitlines()] == ["a", "b"]
    assert ran["ratio"] == pytest.approx(3.0 / 4.0)
    assert skipped == {"row": "dropped", "what": "time", "skipped": "skipped: --skip-side c", "target": "<= 1x"}


def test_picks_subtract_divide_and_take_constants_per_round():
    rounds = _rounds({"a": [30.0, 50.0], "floor": [10.0, 20.0]})
    assert Pick("a", "x", minus=("floor", "x")).values(rounds, {}) == [20.0, 30.0]
    assert Pick("a", "x", per="n").values(rounds, {}) == [3.0, 5.0]
    assert Pick(constant="size").values(rounds, {"size": 7}) == [7.0, 7.0]


def test_the_llama_peer_has_the_270m_mean_shape_and_its_matmul_weights_are_within_2_percent():
    shape = llama_shape("270M")
    assert (shape.hidden_size, shape.num_hidden_layers, shape.head_dim) == (1280, 16, 64)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.intermediate_size) == (16, 4, 2912)
    d, hd, layers = 1280, 64, 16
    llama = layers * (d * 16 * hd + 2 * d * 4 * hd + 16 * hd * d + 3 * d * 2912) + 32000 * d
    # OpenELM 270M (Apple's config.json): query heads 12 (x5), 16 (x7), 20 (x4), a quarter as many key-value heads
    q = [12] * 5 + [16] * 7 + [20] * 4
    ffn = [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120]
    openelm = sum(d * (h + 2 * h // 4) * hd + h * hd * d + 3 * d * f for h, f in zip(q, ffn, strict=True)) + 32000 * d
    assert base_matmul_weights(preset_geometry("270M")) == openelm
    assert abs(llama / openelm - 1) < 0.02


def test_flops_per_token_follow_the_documented_formula_for_the_tiny_model(tiny_model):
    layers = tiny_model.transformer.layers
    base = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    base += tiny_model.transformer.token_embeddings.weight.numel()  # the tied head's vocabulary projection
    attention = sum(layer.attn.num_q_heads * layer.attn.head_dim for layer in layers)
    expected = 4 * base + 6 * 1000 + 12 * 64 * attention
    assert training_flops_per_token(preset_geometry("tiny"), 64, 1000) == expected


def test_the_readme_section_between_the_markers_is_replaced_and_the_rest_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    row = {"row": "r1", "what": "w", "skipped": "skipped: --apple-code not given", "target": ">= 2x"}
    update_readme(readme, {"r1": row}, "python benchmarks/run.py x")
    text = readme.read_text()
    assert text.startswith("intro\n" + START) and text.endswith(END + "\noutro\n") and "old table" not in text
    assert "| r1 | w |" in text and "not measured yet" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="benchmark-table:start"):
        update_readme(readme, {}, "x")


def test_usage_mistakes_are_one_line_naming_the_option(tmp_path, capsys):
    from run import parse_args

    code = tmp_path / "apple-code"
    code.mkdir()
    for name in ("configuration_openelm.py", "modeling_openelm.py"):
        (code / name).write_text("")

    for argv, expected in (
        (["--all", "--apple-code", str(tmp_path)], "--apple-code"),
        (["no-such-group"], "unknown group 'no-such-group'"),
        ([], "give --all"),
        (["--all", "--rounds", "0"], "--rounds"),
        (["dpo", "--preset", "7B"], "--preset '7B'"),
        (["real-data", "--examples", "0"], "--examples must be between 1 and 2000"),
        (["scale", "--examples", "2001"], "--examples must be between 1 and 2000"),
        (["real-data", "--skip-side", "real-peft"], "--skip-side 'real-peft' is not a side"),
        (["train-step", "--apple-python", sys.executable], "give --apple-code DIR too"),
        (["train-step", "--apple-code", str(code), "--apple-python", str(code)], "is not an executable file"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and expected in err.strip().splitlines()[-1], err


@pytest.mark.slow
def test_quick_generate_rows_run_each_side_in_its_own_process_and_land_in_results_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(BENCHMARKS / "README.md", readme)
    before = readme.read_text()
    results = tmp_path / "results"
    argv = ["generate", "--quick", "--rounds", "1", "--results-dir", str(results), "--update-readme"]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), *argv, "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["row"]: row for row in map(json.loads, proc.stdout.splitlines())}
    assert set(rows) == {
        "generate-b1-vs-llama",
        "generate-b1-vs-apple",
        "generate-batched-vs-llama",
        "generate-batched-vs-apple",
        "generate-b1-vs-weight-read",
        "weight-read-vs-apple-b1",
    }
    for name in ("generate-b1-vs-llama", "generate-batched-vs-llama", "generate-b1-vs-weight-read"):
        row = rows[name]
        a, b = row["a"]["values"], row["b"]["values"]
        assert len(a) == len(b) == 1 and min(a + b) > 0
        assert row["a"]["best"] == max(a) and row["b"]["best"] == max(b)
        assert row["ratio"] == pytest.approx(max(a) / max(b))
        assert row["machine"]["versions"]["torch"] and "cpu_flags" in row["machine"]
    assert rows["generate-b1-vs-apple"]["skipped"] == "skipped: --apple-code not given"
    done = [line.split(", ")[1] for line in proc.stderr.splitlines() if line.startswith("generate: round")]
    assert done == ["generate-elmtune done", "generate-llama done", "weight-read-peak done"]
    assert rows["weight-read-vs-apple-b1"]["skipped"] == "skipped: --apple-code not given"
    floor = rows["generate-b1-vs-weight-read"]
    assert floor["ratio"] < 1  # decoding does the floor's products and more
    from elmtune.models import load_model

    model = load_model("tiny")  # every 2-D parameter is a matrix a decoding step reads (the tied head once)
    matrices = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2)
    assert floor["notes"]["weights read per token (MiB)"] == pytest.approx(matrices / 2**20, abs=0.05)
    gb_per_s = matrices * floor["b"]["best"] / 1e9
    assert floor["notes"]["GB/s at the floor"] == pytest.approx(gb_per_s, rel=0.01, abs=0.06)
    (stored,) = results.glob("*.jsonl")
    assert [json.loads(line) for line in stored.read_text().splitlines()] == list(rows.values())
    text = readme.read_text()
    head, tail = before.split(START)[0], before.split(END)[1]
    assert text.startswith(head) and text.endswith(tail)
    ratio = rows["generate-b1-vs-llama"]["ratio"]
    assert "| generate-b1-vs-llama |" in text and f"{ratio:.3f}x" in text


def test_quick_eval_rows_compare_whole_processes_and_the_scoring_alone_with_the_same_picks(tmp_path):
    argv = ["eval", "--quick", "--results-dir", str(tmp_path / "results")]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), *argv], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["row"]: row for row in map(json.loads, proc.stdout.splitlines())}
    for name in ("eval-vs-lm-eval-apple", "eval-scoring-vs-lm-eval-apple"):
        assert rows[name]["skipped"] == "skipped: --apple-code not given"
    whole, scoring = rows["eval-vs-lm-eval"], rows["eval-scoring-vs-lm-eval"]
    assert whole["notes"] == scoring["notes"] and whole["notes"]["identical_picks"] == "4/4"
    assert scoring["target"] == "report" and whole["target"] == ">= 4x"
    for side in ("a", "b"):  # scoring is part of each process: its rate is higher than the whole process's
        assert scoring[side]["best"] > whole[side]["best"] > 0


def test_apple_code_loads_from_a_directory_as_a_package_of_its_own(tmp_path):
    from suite.apple_code import load_apple_classes, missing_files

    assert missing_files(tmp_path) == ["configuration_openelm.py", "modeling_openelm.py"]
    (tmp_path / "configuration_openelm.py").write_text("class OpenELMConfig:\n    marker = 'config'\n")
    (tmp_path / "modeling_openelm.py").write_text(
        "from .configuration_openelm import OpenELMConfig\n\n\nclass OpenELMForCausalLM:\n"
        "    config_class = OpenELMConfig\n"
    )
    config_class, model_class = load_apple_classes(tmp_path)
    assert (
        missing_files(tmp_path) == [] and config_class.marker == "config" and model_class.config_class is config_class
    )


def test_the_elmtune_flags_and_the_peers_settings_are_apples_recipe_with_the_same_overrides(tmp_path, monkeypatch):
    from suite.real_data import DATA, run_config, train_flags

    import elmtune.finetune.run as training
    from elmtune.cli.app import main

    captured = []

    def fake_run_training(config, **_):  # what `elmtune train` would train
        captured.append(config)
        return SimpleNamespace(already_finished=True, run_dir=tmp_path, steps=0, final_adapter=tmp_path)

    monkeypatch.setattr(training, "run_training", fake_run_training)
    for checkpointing in (False, True):
        settings = Settings(workdir=str(tmp_path))
        monkeypatch.setattr(
            sys, "argv", ["elmtune", *train_flags(settings, tmp_path / "run", checkpointing=checkpointing)]
        )
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code in (0, None)
        peers = run_config(settings, tmp_path / "run", checkpointing=checkpointing)
        assert captured[-1] == peers
        # Apple's commonsense recipe (CoreNet peft_configs) with the benchmark's overrides
        adapter, data, train = peers.adapter, peers.data, peers.train
        assert (adapter.method, adapter.r, adapter.alpha, adapter.dropout, adapter.targets) == (
            "lora",
            32,
            32,
            0.1,
            ("apple",),
        )
        assert (data.path, data.limit, data.max_length, data.template, data.train_on_prompt) == (
            str(DATA),
            2000,
            256,
            "alpaca",
            True,
        )
        assert (train.batch_size * train.grad_accum, train.max_steps, train.lr, train.betas) == (
            16,
            125,
            3e-4,
            (0.9, 0.95),
        )
        assert (peers.model, train.precision, train.gradient_checkpointing) == ("270M", "fp32", checkpointing)


@pytest.mark.slow
def test_quick_real_data_and_scale_rows_train_the_same_tokens_on_every_side(tmp_path):
    results = tmp_path / "results"
    argv = ["real-data", "scale", "--quick", "--results-dir", str(results), "--workdir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), *argv], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["row"]: row for row in map(json.loads, proc.stdout.splitlines())}
    for name in ("real-data-vs-apple", "real-data-peak-rss-vs-apple", "real-data-checkpointing-peak-rss-vs-apple"):
        assert rows[name]["skipped"] == "skipped: --apple-code not given"
    speed = rows["real-data-vs-trl"]
    assert speed["unit"] == "examples/s" and speed["target"] == ">= 1.5x"
    assert (
        speed["a"]["best"] > 0
        and speed["b"]["best"] > 0
        and speed["ratio"] == pytest.approx(speed["a"]["best"] / speed["b"]["best"])
    )
    notes = speed["notes"]
    ours, theirs = notes["tokens trained (elmtune / peer)"].split(" / ")
    assert notes["identical tokens"] == "yes" and int(ours) == int(theirs) > 8  # one pass over the same 8 examples
    trained = int(ours)
    ours, theirs = notes["adapter parameters (elmtune / peer)"].split(" / ")
    assert int(ours) == int(theirs) > 0
    assert rows["real-data-loop-vs-apple"]["skipped"] == "skipped: --apple-code not given"
    loop = rows["real-data-loop-vs-trl"]
    # the loop excludes start-up, tokenisation and saving: faster than the whole process on both sides
    assert loop["a"]["best"] > speed["a"]["best"] and loop["b"]["best"] > speed["b"]["best"]
    ours, theirs = loop["notes"]["positions computed (elmtune / peer)"].split(" / ")
    assert int(ours) == trained  # padding-free: elmtune computes exactly the tokens it trains on
    assert int(theirs) >= trained  # TRL pads each batch to its longest example
    for name in ("real-data-peak-rss-vs-trl", "real-data-checkpointing-peak-rss-vs-trl"):
        assert rows[name]["unit"] == "MiB" and rows[name]["a"]["best"] > 100 and rows[name]["target"] == "report"
    for name in ("scale-2-processes-vs-1", "scale-2-processes-vs-1-wall"):
        row = rows[name]
        assert row["a"]["best"] > 0 and row["b"]["best"] > 0 and row["target_met"] is None
        assert row["notes"]["processes x threads (2 / 1)"] == "2 x 1 vs 1 x 1"  # --quick: one thread per process
    (stored,) = results.glob("*.jsonl")
    assert len(stored.read_text().splitlines()) == len(rows) == 10


def test_quick_padding_free_comparison_runs_and_finds_the_same_loss_in_fewer_tokens():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "padding_free.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in done.stdout.splitlines() if "| pad" in line}
    padded, free = int(rows["padded"][0]), int(rows["padding-free"][0])
    assert 0 < free < padded  # the sample's examples differ in length: padding costs tokens
    difference = float(done.stdout.split("between the layouts: ")[1])
    assert difference < 1e-5


def _last_json_line(script: str, *args: str) -> dict:
    """The last stdout line of ``benchmarks/SCRIPT ARGS`` as JSON (the script must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_shared_prompt_positions_count_each_pairs_common_prefix_once():
    result = _last_json_line("shared_prompt_positions.py")
    assert result["pairs"] > 30 and result["max_length"] == 1024  # the bundled sample, Apple's Instruct lengths
    assert result["mean_shared_prefix"] > 20  # every pair repeats its chat-formatted prompt
    saved = result["mean_positions_separate"] - result["mean_positions_shared"]
    assert saved == pytest.approx(result["mean_shared_prefix"])
    assert result["shared_over_separate"] == pytest.approx(
        result["mean_positions_shared"] / result["mean_positions_separate"]
    )


def test_quick_preference_eval_scores_equal_separate_rows():
    result = _last_json_line("preference_eval.py", "--quick")
    assert result["pairs"] == 4 and all(len(times) == 1 for times in result["seconds"].values())
    assert result["max_abs_logp_difference"] < 1e-3  # summed log-probs of about -1,000 nats, fp32 logits
    best = {name: min(times) for name, times in result["seconds"].items()}
    assert result["shared_over_separate"] == pytest.approx(best["shared"] / best["separate"], rel=1e-2)


def test_quick_dpo_steps_run_every_kind_and_state_the_separate_rows_floor():
    result = _last_json_line("dpo_vs_sft.py", "--quick", "--json", "--rounds", "1")
    assert set(result["ratio_to_sft"]) == {"sft", "dpo", "dpo-precomputed", "dpo-separate", "reference-forward"}
    assert result["on_the_fly_floor"] == pytest.approx(1 + result["ratio_to_sft"]["reference-forward"])


def test_grouped_padding_free_batches_are_the_length_grouped_samplers_sorted_disjoint_batches():
    import padding_free

    random = padding_free.batches_of(8, 3, 256)
    grouped = padding_free.batches_of(8, 3, 256, grouped=True)
    ids = [tuple(example.input_ids.tolist()) for batch in grouped for example in batch]
    assert len(grouped) == 3 and all(len(batch) == 8 for batch in grouped) and len(set(ids)) == 24
    for batch in grouped:  # grouped within a window, longest first
        lengths = [len(example) for example in batch]
        assert lengths == sorted(lengths, reverse=True)

    def padding(batches):
        real = sum(len(e) for b in batches for e in b)
        return sum(len(b) * max(map(len, b)) for b in batches) / real - 1

    assert padding(grouped) < padding(random)


STAND_IN_CONFIG = """
class OpenELMConfig:
    def __init__(self, **fields):
        self.__dict__.update(fields)
"""
STAND_IN_MODEL = """
from types import SimpleNamespace

import torch
from torch import nn

from configuration_openelm import OpenELMConfig


class OpenELMForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, v = config.model_dim, getattr(config, "vocab_size", 32000)
        self.config = config
        self.token_embeddings = nn.Embedding(v, d)
        self.qkv_proj, self.out_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.proj_1, self.proj_2 = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, input_ids, labels=None, **kwargs):
        h = self.out_proj(self.qkv_proj(self.token_embeddings(input_ids)))
        h = h + self.proj_2(self.proj_1(h))
        logits = h @ self.token_embeddings.weight.T
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return SimpleNamespace(loss=loss, logits=logits)
"""
NO_ELMTUNE_PYTHON = """#!{python}
import runpy, sys


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "elmtune":
            raise ImportError("elmtune imported under --apple-python")


sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_apples_side_runs_under_apple_python_without_elmtune_and_the_rows_name_both_libraries(tmp_path):
    code = tmp_path / "apple-code"
    code.mkdir()
    (code / "configuration_openelm.py").write_text(STAND_IN_CONFIG)
    (code / "modeling_openelm.py").write_text(STAND_IN_MODEL)
    python = tmp_path / "python"
    python.write_text(NO_ELMTUNE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    settings = Settings(apple_code=str(code), apple_python=str(python)).quick()
    apple = Side("train-apple", "train-apple", needs_apple=True)
    assert apple.argv(settings)[0] == str(python)
    assert Side("train-elmtune", "train-elmtune").argv(settings)[0] == sys.executable
    row = Row("r", "tokens/s", Pick("train-apple", "tokens_per_s"), Pick("train-apple", "tokens_per_s"), "t", True)
    result = run_group(Group("g", [apple], [row]), settings, rounds=1, log=lambda _: None)[0]
    assert result["a"]["best"] > 0 and "notes" not in result  # one side: the same libraries
    probe = tmp_path / "probe.py"
    probe.write_text("import elmtune\n")
    refused = subprocess.run([str(python), str(probe)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "elmtune imported under --apple-python" in refused.stderr
    rounds = [{"a": {"metrics": {"x": 1.0}, "info": {"libraries": "t 5"}}}]
    rounds[0]["b"] = {"metrics": {"x": 2.0}, "info": {"libraries": "t 4"}}
    noted = row_result(Row("n", "x", Pick("a", "x"), Pick("b", "x"), "x", True), rounds, {})
    assert noted["notes"] == {"libraries (A / B)": "t 5 / t 4"}


def test_the_presets_read_for_apples_code_equal_elmtunes_and_import_no_elmtune():
    from elmtune.models.presets import PRESETS

    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from suite.apple_code import preset_config; "
        "print(json.dumps([preset_config('270M'), sorted(m for m in sys.modules if m.startswith('elmtune'))]))"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(BENCHMARKS)], capture_output=True, text=True, check=True)
    config, imported = json.loads(out.stdout)
    assert config == json.loads(json.dumps(PRESETS["270M"])) and imported == []


@pytest.mark.parametrize(("offset", "same"), [(0.0, True), (0.01, False)])
def test_apple_code_check_compares_logits_on_the_same_weights_and_fails_on_a_difference(tmp_path, offset, same):
    from apple_code_check import main

    code = tmp_path / "apple-code"
    code.mkdir()
    (code / "configuration_openelm.py").write_text("from elmtune.models import OpenELMConfig  # noqa: F401\n")
    (code / "modeling_openelm.py").write_text(
        "from elmtune.models import OpenELMForCausalLM as Native\n\n\n"
        "class OpenELMForCausalLM(Native):\n"
        "    def forward(self, *args, **kwargs):\n"
        "        out = super().forward(*args, **kwargs)\n"
        f"        out.logits = out.logits + {offset}\n"
        "        return out\n"
    )
    status = main(["--apple-code", str(code), "--apple-python", sys.executable])
    assert status == (0 if same else 1)


def test_step_memory_counts_the_saved_logits_and_names_each_modules_part(capsys):
    from step_memory import category, main

    assert main(["--quick"]) == 0
    sides = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [side["side"] for side in sides] == ["elmtune", "llama"]
    quick = Settings().quick()
    logits_mib = quick.batch * quick.seq * 32000 * 4 / 2**20  # fp32 log-probabilities kept for the loss's backward
    for side in sides:
        assert side["saved_by_category_mib"]["logits and loss"] >= logits_mib
        assert side["peak_rss_mib"] >= side["floor_mib"] + side["weights_mib"] + side["saved_mib"]
    names = {
        "base_model.model.transformer.layers.3.attn.qkv_proj.lora_A.default": "LoRA",
        "transformer.layers.0.attn.q_norm": "norms",
        "transformer.layers.0.ffn_norm": "norms",
        "model.layers.2.self_attn.o_proj": "attention",
        "transformer.layers.5.ffn.proj_1": "feed-forward",
        "model.layers.1.mlp.down_proj": "feed-forward",
        "model.embed_tokens": "embedding",
        "": "logits and loss",
    }
    assert {name: category(name) for name in names} == names


def test_the_apple_trainer_run_file_holds_elmtunes_tokens_and_old_transformers_get_group_by_length(tmp_path):
    from suite.peer_trainers import _training_arguments, apple_run_file, elmtune_tokens, write_apple_run
    from suite.real_data import run_config

    from elmtune.models import load_tokenizer

    settings = Settings(workdir=str(tmp_path), apple_code=str(tmp_path)).quick()
    assert write_apple_run(Settings(workdir=str(tmp_path)).quick()) == {} and not apple_run_file(settings).exists()
    write_apple_run(settings)
    run = json.loads(apple_run_file(settings).read_text())
    config = run_config(settings, tmp_path)
    ours = [t.input_ids.tolist() for t in elmtune_tokens(config, load_tokenizer())]
    assert [row["input_ids"] for row in run["rows"]] == ours and run["examples"] == len(ours) == 8
    assert run["lora"] == {"r": 4, "lora_alpha": config.adapter.alpha, "lora_dropout": config.adapter.dropout}
    assert run["trainer"]["train_sampling_strategy"] == "group_by_length" and "output_dir" not in run["trainer"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated name reaches transformers 5
        arguments = _training_arguments(run["trainer"], str(tmp_path / "out"))  # transformers 5: the strategy field
    assert arguments.train_sampling_strategy == "group_by_length" and arguments.output_dir == str(tmp_path / "out")
    assert arguments.activation_checkpointing is False


def test_trainer_keywords_take_the_older_names_where_transformers_lacks_the_new_ones():
    from dataclasses import make_dataclass

    from suite.peer_trainers import for_installed

    old_arguments = make_dataclass("OldArguments", ["output_dir", "group_by_length", "gradient_checkpointing"])
    keywords = {"output_dir": "o", "train_sampling_strategy": "random", "activation_checkpointing": True}
    assert for_installed(old_arguments, keywords) == {
        "output_dir": "o",
        "group_by_length": False,
        "gradient_checkpointing": True,
    }
    new_arguments = make_dataclass("NewArguments", list(keywords))
    assert for_installed(new_arguments, keywords) == keywords


def test_the_apple_eval_files_hold_the_questions_and_elmtunes_weights_and_its_tokenizer_encodes_alike(tmp_path):
    from safetensors.torch import load_file
    from suite.apple_code import bundled_tokenizer
    from suite.infer_sides import _questions, apple_eval_files, write_apple_eval

    from elmtune.models import load_model, load_tokenizer

    settings = Settings(workdir=str(tmp_path), apple_code=str(tmp_path)).quick()
    write_apple_eval(settings)
    requests_file, weights_file = apple_eval_files(settings)
    run = json.loads(requests_file.read_text())
    assert run["requests"] == [[list(r) for r in q.requests] for q in _questions(settings)]
    expected = load_model(settings.preset).state_dict()
    saved = load_file(str(weights_file))
    assert set(saved) == set(expected) - {"lm_head.weight"}  # the tied head is the embedding
    assert all(torch.equal(saved[name], expected[name]) for name in saved)
    ours, theirs = load_tokenizer(), bundled_tokenizer()
    for text in ("Question: Which is a mammal?\nAnswer:", " a whale", "naïve café, 42 %"):
        assert theirs(text)["input_ids"] == ours(text)["input_ids"]
    assert theirs.pad_token_id == ours.pad_token_id == 0 and theirs.eos_token_id == ours.eos_token_id


def test_the_profile_table_gives_each_sides_ms_and_elmtunes_difference_to_each_other_side():
    from profile_vs_llama import _table

    best = {
        "elmtune": {"categories": {"matmul": 10.0, "norm": 2.0}},
        "llama": {"categories": {"matmul": 11.0, "norm": 1.0}},
        "apple": {"categories": {"matmul": 14.0, "norm": 3.0}},
    }
    lines = _table(best).splitlines()
    assert lines[0] == "| category | elmtune ms | llama ms | apple ms | elmtune - llama ms | elmtune - apple ms |"
    assert lines[2:] == [
        "| matmul | 10 | 11 | 14 | -1 | -4 |",
        "| norm | 2 | 1 | 3 | +1 | -1 |",
        "| total | 12 | 12 | 17 | +0 | -5 |",
    ]


def test_quick_page_fault_runs_record_every_step_under_each_allocators_own_environment(capsys):
    import page_faults

    runs = page_faults.main(["--quick", "--allocators", "default", "retained-heap"])
    quick = Settings().quick()
    steps = -(-quick.examples // (quick.real_batch * quick.real_accum))  # one pass over the examples
    assert [len(runs[name]) for name in ("default", "retained-heap")] == [1, 1]
    for name, expected_env in (("default", {}), ("retained-heap", page_faults.ALLOCATORS["retained-heap"])):
        run = runs[name][0]
        assert run["env"] == expected_env
        assert len(run["steps"]) == steps
        assert all(step["wall"] > 0 and step["faults"] >= 0 and step["user"] >= 0 for step in run["steps"])
        assert run["peak_mib"] > 100  # torch alone is more
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| default")]
    assert len(table) == 1
