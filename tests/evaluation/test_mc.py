"""The generic ``mc`` protocol against a hand-written reference loop (lm-eval's multiple_choice recipe, by hand)."""

import json

import pytest
import torch

from elmtune.errors import ElmtuneError
from elmtune.evaluation.config import EvalConfig
from elmtune.evaluation.mc import MCFormat, mc_question
from elmtune.evaluation.protocols import run_mc
from elmtune.evaluation.scoring import LoglikelihoodScorer


@torch.inference_mode()
def _reference(model, tokenizer, context, continuation):
    """lm-eval's recipe written out: move trailing spaces, encode the joined text, split at the context's length."""
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    context_ids = tokenizer.encode(stripped)  # BOS added by the tokenizer
    whole = tokenizer.encode(stripped + continuation)
    cont_ids = whole[len(context_ids) :]
    ids = torch.tensor([context_ids + cont_ids])
    logprobs = torch.log_softmax(model(ids[:, :-1]).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(context_ids) - 1 + j, t]) for j, t in enumerate(cont_ids))


def test_mc_file_with_template_matches_a_hand_written_reference(tiny_model, tokenizer, fixtures_dir):
    path = fixtures_dir / "mc" / "copa.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()][:5]
    fmt = MCFormat(template="{{query}} ", target_delimiter="")  # trailing space moves to each choice
    config = EvalConfig(protocol="mc", data=(str(path),), limit=5, mc_format=fmt, progress=False)
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=4, progress=False)
    result = run_mc(scorer, "copa", path, config)
    assert result.n == 5 and [m.metric for m in result.metrics] == ["acc", "acc_norm"]
    correct = []
    for row, example in zip(rows, result.examples, strict=True):
        lls = [_reference(tiny_model, tokenizer, row["query"] + " ", choice) for choice in row["choices"]]
        assert [c["loglikelihood"] for c in example["choices"]] == pytest.approx(lls, abs=2e-4)
        pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
        assert example["pred"] == pred
        correct.append(float(pred == row["gold"]))
    assert result.metrics[0].value == sum(correct) / len(correct)


def test_mc_schema_partial_scoring_rows(tiny_model, tokenizer, fixtures_dir):
    path = fixtures_dir / "mc" / "winogrande_schema.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    question = mc_question(row, 0, "wg", MCFormat())
    assert question.requests == tuple((ctx, " " + row["continuation"]) for ctx in row["context_options"])
    scorer = LoglikelihoodScorer(tiny_model, tokenizer, batch_size=2, progress=False)
    (scores,) = scorer.score([question])
    lls = [_reference(tiny_model, tokenizer, ctx, " " + row["continuation"]) for ctx in row["context_options"]]
    assert [s.loglikelihood for s in scores] == pytest.approx(lls, abs=2e-4)


def test_mc_row_errors_are_one_line_and_name_the_row():
    with pytest.raises(ElmtuneError, match="row 4: needs 'choices'"):
        mc_question({"query": "q", "gold": 0}, 3, "t", MCFormat())
    with pytest.raises(ElmtuneError, match="gold 2 is not an index"):
        mc_question({"query": "q", "choices": ["a", "b"], "gold": 2}, 0, "t", MCFormat())
    with pytest.raises(ElmtuneError, match="missing field"):
        mc_question({"choices": ["a"], "gold": 0}, 0, "t", MCFormat(template="{{question}}"))
