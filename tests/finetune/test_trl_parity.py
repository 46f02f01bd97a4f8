"""Preference optimisation agrees with TRL's DPOTrainer: tokens, log-probs, rewards, metrics and losses.

Both sides get the same tiny OpenELM with the same LoRA adapter (B matrices set to random non-zero values, so the
policy differs from the reference) and the same pairs. TRL's numbers come from its own code: its dataset
preparation (tokenisation), its data collator, and ``DPOTrainer.compute_loss`` on the collated batch, which records
the batch's metrics in ``trainer._metrics``; its training loop is not run. TRL gets the base model as an explicit
``ref_model``, while elmtune switches the adapter off: the two references must agree too. Everything runs in fp32
(TRL's configs default to bf16 autocast, so ``bf16=False``).

Values agree to 1e-5 absolute, or 1e-6 relative for large ones: a response's summed log-probability is about -80 here,
where one fp32 ulp is 8e-6, and TRL's fused LM head sums the same terms in a different order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from elmtune.adapters import AdapterConfig, apply_adapter, disable_adapters
from elmtune.datasets import (
    Message,
    PreferenceExample,
    PreferenceTokenizeConfig,
    collate_preference,
    tokenize_preference,
)
from elmtune.finetune.objectives import PreferenceObjective, target_logps
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_tokenizer

trl = pytest.importorskip("trl")  # a dev dependency; the oldest-versions CI run deselects the `trl` marker
pytestmark = pytest.mark.trl

TOLERANCE = 1e-5
RELATIVE = 1e-6
LOGP_NATS = 5e-5
"""Two fp32 sums of a sequence's token log-probs (about -85 nats here), taken in different orders by two programs,
differ by up to a few 1e-7 relative (3e-5 nats seen on an AVX-512 CPU); a reward is beta times a difference of two."""


def _abs_tolerance(name: str, beta: float) -> float:
    """Absolute tolerance of a TRL metric: rewards and margins carry beta x the log-prob rounding of two sums each."""
    if name.startswith("rewards/") and name != "rewards/accuracies":
        return TOLERANCE + 2 * beta * LOGP_NATS
    return TOLERANCE


TRL_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
PAIRS = {
    "prompt": [
        "Is the sky blue?",
        "Question: can fish breathe air?\nAnswer:",
        "Name a prime number.",
        "Write one sentence about autumn leaves.",
    ],
    "chosen": [
        " Yes, on a clear day.",
        " No, they use gills.",
        " Seven.",
        " Autumn leaves turn red and gold before they fall.",
    ],
    "rejected": [
        " No.",
        " Yes, always, with lungs like ours.",
        " Nine, it is prime.",
        " Leaves.",
    ],
}


def _examples(pairs: dict[str, list[str]]) -> list[PreferenceExample]:
    rows = zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], strict=True)
    return [PreferenceExample(prompt=(Message("user", p),), chosen=c, rejected=r) for p, c, r in rows]


def _base() -> OpenELMForCausalLM:
    torch.manual_seed(0)
    return OpenELMForCausalLM(OpenELMConfig.from_preset("tiny"))


def _policy():
    """The same adapted model on every call: LoRA on the tiny model, B drawn at random so policy != reference."""
    model = apply_adapter(_base(), AdapterConfig(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_module() -> Iterator[None]:
    """Run torch on one thread: tiny kernels run far faster so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def ours(tokenizer):
    """elmtune's policy and its collated batch of every pair (plain template: the prompt text, then the reply)."""
    pairs, report = tokenize_preference(_examples(PAIRS), tokenizer, PreferenceTokenizeConfig(template="plain"))
    assert report.kept == len(PAIRS["prompt"]) and report.truncated == 0
    return _policy().eval(), collate_preference(pairs)


def _trainer(tmp_path, tokenizer, pairs=PAIRS, *, model=None, **settings):
    from datasets import Dataset

    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(pairs["prompt"]),
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        **{"max_length": None, **settings},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trl.DPOTrainer(
            model=model if model is not None else _policy(),
            ref_model=_base(),
            args=args,
            train_dataset=Dataset.from_dict(pairs),
            processing_class=tokenizer,
        )


@dataclass
class TRLStep:
    """TRL's collated batch of some rows, its loss and its logged metrics for that batch."""

    batch: dict[str, torch.Tensor]
    loss: float
    metrics: dict[str, float]


def _trl_step(trainer, rows) -> TRLStep:
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        loss = trainer.compute_loss(trainer.model, batch)
    logged = trainer._metrics["train" if trainer.model.training else "eval"]
    return TRLStep(batch, float(loss), {name: logged[name][-1] for name in TRL_METRICS})


def _select(batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    return {key: value[rows] for key, value in batch.items()}


def _our_step(model, batch, **objective) -> tuple[float, dict[str, float]]:
    """Mean loss and metrics over the pairs, as the loop logs them (sums divided by the pair count)."""
    with torch.no_grad():
        out = PreferenceObjective(**objective)(model, batch)
    pairs = batch["chosen_input_ids"].shape[0]
    return out.loss_sum.item() / pairs, {name: value.item() / pairs for name, value in out.metrics.items()}


def test_both_sides_see_the_same_tokens(ours, tokenizer, tmp_path):
    _, batch = ours
    theirs = _trl_step(_trainer(tmp_path, tokenizer), range(len(PAIRS["prompt"]))).batch
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, L)
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])  # (2B, L)
    targets = torch.cat([batch["chosen_labels"], batch["rejected_labels"]]) != -100  # (2B, L)
    for row in range(ids.shape[0]):
        print(row, ids[row][mask[row].bool()].tolist(), targets[row].int().tolist())
        print(row, theirs["input_ids"][row][theirs["attention_mask"][row].bool()].tolist())
    assert torch.equal(mask, theirs["attention_mask"])  # both right-pad to the longest of the 2B sequences
    assert torch.equal(ids * mask, theirs["input_ids"] * theirs["attention_mask"])  # the same ids where not padding
    assert torch.equal(targets, theirs["completion_mask"].bool())  # the same loss mask: reply + EOS
    assert targets.sum(-1).min() > 1


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_log_probs_rewards_and_metrics_match_trl(ours, tokenizer, tmp_path, beta):
    model, batch = ours
    trainer = _trainer(tmp_path, tokenizer, beta=beta)
    n_pairs = len(PAIRS["prompt"])
    theirs = _trl_step(trainer, range(n_pairs))
    _, metrics = _our_step(model, batch, beta=beta)
    print({name: (metrics[name], theirs.metrics[name]) for name in TRL_METRICS})
    for name in TRL_METRICS:
        assert metrics[name] == pytest.approx(theirs.metrics[name], abs=_abs_tolerance(name, beta), rel=RELATIVE), name
    assert 0 < theirs.metrics["rewards/accuracies"] < 1  # a batch with pairs won and lost

    # per sequence: TRL's log-probs of its policy and of its explicit reference model
    with torch.no_grad():
        trl_policy = torch.cat(trainer.compute_ref_log_probs(trainer.model, theirs.batch))  # (2B,)
        trl_reference = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, theirs.batch))  # (2B,)
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])  # (2B, L)
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])  # (2B, L)
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])  # (2B, L)
        policy, _ = target_logps(model(input_ids=ids, attention_mask=mask).logits[:, :-1], labels[:, 1:])
        with disable_adapters(model):
            reference, _ = target_logps(model(input_ids=ids, attention_mask=mask).logits[:, :-1], labels[:, 1:])
    assert torch.allclose(policy, trl_policy, atol=TOLERANCE, rtol=RELATIVE)
    assert torch.allclose(reference, trl_reference, atol=TOLERANCE, rtol=RELATIVE)
    assert (policy - reference).abs().min() > 0.1  # the adapter moves every sequence away from the reference

    # per pair: a batch of one pair gives that pair's rewards, margin and accuracy
    for row in range(n_pairs):
        _, pair_metrics = _our_step(model, _select(batch, [row]), beta=beta)
        pair_theirs = _trl_step(trainer, [row]).metrics
        for name in TRL_METRICS:
            expected = pytest.approx(pair_theirs[name], abs=_abs_tolerance(name, beta), rel=RELATIVE)
            assert pair_metrics[name] == expected, (row, name)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_losses_match_trl(ours, tokenizer, tmp_path, loss_type, beta):
    # TRL's IPO averages each response's log-ratio over its completion tokens, as elmtune does: the same definition
    model, batch = ours
    theirs = _trl_step(_trainer(tmp_path, tokenizer, loss_type=loss_type, beta=beta), range(len(PAIRS["prompt"])))
    loss, _ = _our_step(model, batch, loss_type=loss_type, beta=beta)
    print(loss_type, beta, loss, theirs.loss)
    assert loss == pytest.approx(theirs.loss, abs=TOLERANCE, rel=RELATIVE)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_label_smoothing_matches_trl(ours, tokenizer, tmp_path, beta):
    # TRL 1.x's `sigmoid` loss no longer reads `label_smoothing` (earlier releases computed conservative DPO there);
    # TRL's `aot_unpaired` loss still computes -(1 - ls) log sigmoid(beta d) - ls log sigmoid(-beta d), after sorting
    # the chosen and the rejected log-ratios of the batch separately. On a batch of one pair the sort changes nothing,
    # so there it is exactly conservative DPO.
    model, batch = ours
    smoothing = 0.1
    trainer = _trainer(tmp_path / "aot", tokenizer, loss_type="aot_unpaired", beta=beta, label_smoothing=smoothing)
    for row in range(len(PAIRS["prompt"])):
        theirs = _trl_step(trainer, [row])
        loss, _ = _our_step(model, _select(batch, [row]), beta=beta, label_smoothing=smoothing)
        assert loss == pytest.approx(theirs.loss, abs=TOLERANCE), row

    # over the batch: since log sigmoid(x) - log sigmoid(-x) = x, conservative DPO is DPO plus ls times the margin,
    # so the mean loss is TRL's sigmoid loss plus ls times its `rewards/margins`
    dpo = _trl_step(_trainer(tmp_path / "dpo", tokenizer, beta=beta), range(len(PAIRS["prompt"])))
    loss, _ = _our_step(model, batch, beta=beta, label_smoothing=smoothing)
    assert loss == pytest.approx(dpo.loss + smoothing * dpo.metrics["rewards/margins"], abs=TOLERANCE)
    assert not math.isclose(loss, dpo.loss, abs_tol=1e-3)  # the smoothing is not a no-op on this batch


MAX_LENGTH, MAX_PROMPT_LENGTH = 28, 12
TRUNCATION_PAIRS = {  # name: (prompt, chosen, rejected)
    "fits": ("Is the sky blue?", " Yes.", " No."),
    "short prompt, long replies": (
        "Name a colour.",
        " Red is a warm colour that people often link with fire, blood, danger and love, and with the signs that"
        " tell drivers to stop.",
        " Blue is the colour of the clear sky and of the deep open sea on a calm day, far away from any land.",
    ),
    "long prompt, long replies": (
        "Explain why the sea is salty to a curious child in two short sentences.",
        " Rivers carry salt from rocks into the sea. The water dries up but the salt stays behind.",
        " Because fish cry a lot, so their tears make all the water taste of salt.",
    ),
    "long prompt, one long reply": (
        "Summarise the rules of chess for a child who has never played it before.",
        " Trap the king.",
        " Chess is a board game played by two people on a board of sixty-four squares in eight rows.",
    ),
    "prompt longer than max_length": (
        "Here is a long note: the meeting moved from Monday to Thursday because the main hall is being painted, and"
        " lunch will be served at noon in the garden. When is the meeting?",
        " On Thursday.",
        " On Monday, in the main hall.",
    ),
}


@dataclass(frozen=True)
class TokenSequence:
    """One tokenised prompt + reply: its ids and which of them are loss targets."""

    ids: list[int]
    targets: list[bool]


def _untruncated(tokenizer, prompt: str, reply: str) -> tuple[list[int], int]:
    """BOS + prompt + reply + EOS tokenised whole, and the prompt's length in tokens (BOS included)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + reply + tokenizer.eos_token)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids  # the reply starts on a token boundary
    return ids, len(prompt_ids)


def _trl_rule(ids: list[int], n_prompt: int) -> TokenSequence | None:
    """TRL 1.x: each sequence keeps its first max_length tokens; a pair whose prompt fills max_length is dropped."""
    if n_prompt >= MAX_LENGTH:
        return None
    targets = [i >= n_prompt for i in range(len(ids))]
    return TokenSequence(ids[:MAX_LENGTH], targets[:MAX_LENGTH])


def _our_rule(ids: list[int], n_prompt: int, pair_too_long: bool) -> TokenSequence:
    """elmtune: when a pair's longer sequence exceeds max_length, both sequences keep BOS and the last
    max_prompt_length - 1 prompt tokens; then each keeps its first max_length tokens."""
    if pair_too_long and n_prompt > MAX_PROMPT_LENGTH:
        ids = ids[:1] + ids[n_prompt - (MAX_PROMPT_LENGTH - 1) :]
        n_prompt = MAX_PROMPT_LENGTH
    targets = [i >= n_prompt for i in range(len(ids))]
    return TokenSequence(ids[:MAX_LENGTH], targets[:MAX_LENGTH])


@pytest.fixture(scope="module")
def truncated(tokenizer, tmp_path_factory):
    """Per pair name: elmtune's and TRL's (chosen, rejected) sequences (TRL's None when it drops the pair), and the
    rules' expectations from the untruncated tokens."""
    prompts, chosen, rejected = (list(texts) for texts in zip(*TRUNCATION_PAIRS.values(), strict=True))
    columns = {"prompt": prompts, "chosen": chosen, "rejected": rejected}
    config = PreferenceTokenizeConfig(max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH, template="plain")
    ours, report = tokenize_preference(_examples(columns), tokenizer, config)
    assert report.kept == len(prompts)
    trainer = _trainer(tmp_path_factory.mktemp("trl"), tokenizer, columns, model=_base(), max_length=MAX_LENGTH)
    trl_rows = {row["prompt"]: i for i, row in enumerate(trainer.train_dataset)}
    results = {}
    for name, (prompt, *replies), pair in zip(TRUNCATION_PAIRS, TRUNCATION_PAIRS.values(), ours, strict=True):
        sides = ((pair.chosen_input_ids, pair.chosen_labels), (pair.rejected_input_ids, pair.rejected_labels))
        ours_pair = tuple(TokenSequence(ids.tolist(), (labels != -100).tolist()) for ids, labels in sides)
        theirs = None
        if prompt in trl_rows:
            batch = trainer.data_collator([trainer.train_dataset[trl_rows[prompt]]])
            keep = batch["attention_mask"].bool()  # (2, L): chosen, rejected
            ids, targets = batch["input_ids"], batch["completion_mask"].bool()  # (2, L) each
            theirs = tuple(TokenSequence(ids[i][keep[i]].tolist(), targets[i][keep[i]].tolist()) for i in range(2))
        full = [_untruncated(tokenizer, prompt, reply) for reply in replies]
        too_long = max(len(ids) for ids, _ in full) > MAX_LENGTH
        results[name] = {
            "ours": ours_pair,
            "trl": theirs,
            "our rule": tuple(_our_rule(ids, n, too_long) for ids, n in full),
            "trl rule": None if full[0][1] >= MAX_LENGTH else tuple(_trl_rule(ids, n) for ids, n in full),
            "prompt tokens": full[0][1],
            "lengths": [len(ids) for ids, _ in full],
        }
    return results


@pytest.mark.parametrize("name", ["fits", "short prompt, long replies"])
def test_truncation_matches_trl_when_the_prompt_fits(truncated, name):
    case = truncated[name]
    assert case["prompt tokens"] <= MAX_PROMPT_LENGTH
    assert (max(case["lengths"]) > MAX_LENGTH) == (name != "fits")
    assert case["ours"] == case["trl"] == case["our rule"] == case["trl rule"]


@pytest.mark.parametrize("name", ["long prompt, long replies", "long prompt, one long reply"])
def test_truncation_keeps_the_end_of_a_long_prompt_where_trl_keeps_its_start(truncated, name):
    case = truncated[name]
    assert MAX_PROMPT_LENGTH < case["prompt tokens"] < MAX_LENGTH and max(case["lengths"]) > MAX_LENGTH
    assert case["ours"] == case["our rule"]
    assert case["trl"] == case["trl rule"]
    assert case["ours"] != case["trl"]
    kept = [(sum(ours.targets), sum(theirs.targets)) for ours, theirs in zip(case["ours"], case["trl"], strict=True)]
    assert all(ours >= theirs for ours, theirs in kept) and any(ours > theirs for ours, theirs in kept)  # more reply
    if name == "long prompt, one long reply":  # the short reply fits, yet shares the shortened prompt of its pair
        assert case["lengths"][0] <= MAX_LENGTH
        assert len(case["ours"][0].ids) < case["lengths"][0] == len(case["trl"][0].ids)


def test_a_prompt_longer_than_max_length_is_shortened_where_trl_drops_the_pair(truncated):
    case = truncated["prompt longer than max_length"]
    assert case["prompt tokens"] >= MAX_LENGTH
    assert case["trl"] is None and case["trl rule"] is None
    assert case["ours"] == case["our rule"]
    assert all(sum(sequence.targets) > 0 for sequence in case["ours"])  # the whole reply is kept
