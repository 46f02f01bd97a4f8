"""Padded against padding-free micro-batches of real data: one LoRA training step's time, side by side in one process.

    python benchmarks/padding_free.py                   # 270M, Apple's targets, r 32, 3 batches of 8, best of 3
    python benchmarks/padding_free.py --batch 16 --batches 2
    python benchmarks/padding_free.py --grouped         # the length-grouped sampler's batches (little padding)
    python benchmarks/padding_free.py --quick           # tiny preset: seconds

The examples are rows of ``benchmarks/data/commonsense_train_sample2000.json`` tokenised as Apple's commonsense
recipe does (the alpaca template, every token trained, max length 256), drawn into micro-batches with a seeded
permutation (or, with ``--grouped``, the first batches of elmtune's length-grouped sampler). Each batch runs forward
and backward through the same LoRA model (the SFT loss with Apple's z-loss) in two layouts: right-padded to its
longest example with a 2-D mask (``collate_padded``), and all its examples in one row without padding
(``collate_padding_free``). The layouts alternate batch by batch and round by round; the table gives each layout's
best total over the batches, the tokens each computes, and checks that both give the same loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite.real_data import DATA  # noqa: E402
from suite.settings import Settings  # noqa: E402
from suite.train_sides import elmtune_adapted  # noqa: E402


def batches_of(batch: int, count: int, max_length: int, seed: int = 0, *, grouped: bool = False) -> list[list]:
    """``count`` micro-batches of ``batch`` tokenised commonsense examples.

    Drawn with a seeded permutation, or with ``grouped`` as the first ``count`` batches of elmtune's length-grouped
    sampler at ``batch`` examples per step (what a run with ``group_by_length``, the default, and no gradient
    accumulation trains on).

    Raises:
        ValueError: The sample has fewer than ``batch * count`` examples.
    """
    from elmtune.datasets import prepare_data
    from elmtune.datasets.config import DataConfig
    from elmtune.datasets.sampler import LengthGroupedBatchSampler
    from elmtune.models import load_tokenizer

    config = DataConfig(
        path=str(DATA), format="commonsense", template="alpaca", train_on_prompt=True, max_length=max_length
    )
    examples = prepare_data(config, load_tokenizer("tiny")).train  # every preset shares the tokenizer
    if batch * count > len(examples):
        raise ValueError(f"--batches x --batch is {batch * count}, more than the sample's {len(examples)} examples")
    if grouped:
        sampler = LengthGroupedBatchSampler([len(e) for e in examples], batch, seed=seed)
        return [[examples[i] for i in indices] for indices in sampler.global_batches(0)[:count]]
    order = np.random.default_rng(seed).permutation(len(examples))
    return [[examples[i] for i in order[k * batch : (k + 1) * batch]] for k in range(count)]


def measure(settings: Settings, batches: list[list], rounds: int) -> dict:
    """Best seconds of each layout over all batches, the tokens each computes, and the largest loss difference."""
    import torch

    from elmtune.datasets.collate import collate_padded
    from elmtune.datasets.packing import collate_padding_free
    from elmtune.finetune.objectives import SFTObjective

    model = elmtune_adapted(settings)  # no dropout: both layouts compute the same function
    objective = SFTObjective(z_loss=1e-4)
    layouts = {"padded": collate_padded, "padding-free": collate_padding_free}
    best = dict.fromkeys(layouts, float("inf"))
    losses: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, collate in layouts.items():
            seconds, losses[name] = 0.0, []
            for examples in batches:
                inputs = collate(examples)
                start = time.perf_counter()
                out = objective(model, inputs)
                out.loss_sum.backward()
                seconds += time.perf_counter() - start
                losses[name].append(out.loss_sum.item())
            model.zero_grad(set_to_none=True)
            best[name] = min(best[name], seconds)
    tokens = {
        "padded": sum(len(b) * max(len(e) for e in b) for b in batches),
        "padding-free": sum(len(e) for b in batches for e in b),
    }
    difference = max(abs(a - b) / abs(a) for a, b in zip(losses["padded"], losses["padding-free"], strict=True))
    return {"best_s": best, "tokens": tokens, "max_loss_rel_difference": difference, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="270M", help="model preset (random weights; default 270M)")
    parser.add_argument("--batch", type=int, default=8, help="examples per micro-batch (Apple's recipe: 8)")
    parser.add_argument("--batches", type=int, default=3, help="micro-batches timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best total of each layout is kept")
    parser.add_argument("--max-length", type=int, default=256, help="longest example in tokens")
    parser.add_argument(
        "--grouped", action="store_true", help="length-grouped micro-batches (the sampler's default) instead of random"
    )
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 batches of 4, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.batches, args.rounds = "tiny", 4, 2, 1
    if min(args.batch, args.batches, args.rounds) < 1 or args.max_length < 2:
        parser.error("--batch, --batches and --rounds must be at least 1 and --max-length at least 2")
    settings = Settings(preset=args.preset)
    try:
        batches = batches_of(args.batch, args.batches, args.max_length, grouped=args.grouped)
    except ValueError as err:
        parser.error(str(err))
    result = measure(settings, batches, args.rounds)
    print(f"# python benchmarks/padding_free.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"# {args.preset}, LoRA r {settings.r} on {settings.targets}, {args.batches} "
        f"{'length-grouped' if args.grouped else 'random'} batches of {args.batch}, ",
        end="",
    )
    print(f"best of {args.rounds}, {result['threads']} threads")
    print("| layout | tokens computed | best seconds | speed-up |\n|---|---:|---:|---:|")
    padded = result["best_s"]["padded"]
    for name, seconds in result["best_s"].items():
        print(f"| {name} | {result['tokens'][name]} | {seconds:.2f} | {padded / seconds:.2f}x |")
    print(f"# largest relative loss difference between the layouts: {result['max_loss_rel_difference']:.1e}")
    if result["max_loss_rel_difference"] > 1e-4:
        print("error: the layouts disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
