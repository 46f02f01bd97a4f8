"""Token positions a DPO step computes per pair on real preference data: separate rows against the shared prompt.

Tokenises a preference file the way ``elmtune train`` does (a recipe's ``data`` settings: template, ``max_length``,
``max_prompt_length``) and counts, over every pair, the positions of the chosen and the rejected sequence as two rows
(``Lc + Lr``) and as one row with their common prefix once (``Lc + Lr - S``, ``train.share_prompt``). Padding is
left out of both, so the ratio is what the shared prompt saves in the policy's forward and backward passes and the
reference's forward pass before any batching.

    python benchmarks/shared_prompt_positions.py                     # the bundled UltraFeedback sample, Apple's lengths
    python benchmarks/shared_prompt_positions.py --data PAIRS.jsonl --recipe recipes/openelm-270M-instruct-dpo.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Print the positions per pair (mean) and the ratio of the totals, with and without the shared prompt."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(ROOT / "src" / "elmtune" / "samples" / "ultrafeedback_binarized_sample.jsonl")
    )
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "openelm-270M-instruct-dpo.yaml"))
    args = parser.parse_args()

    from elmtune.datasets import prepare_data
    from elmtune.finetune.config import load_run_config
    from elmtune.models import load_tokenizer
    from elmtune.models.attention_mask import common_prefix_length

    recipe = load_run_config(args.recipe)
    data_config = dataclasses.replace(recipe.data, path=args.data, validation_size=0, skip_invalid=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare_data(data_config, load_tokenizer())

    separate, shared, prefixes = [], [], []
    for pair in data.train:
        chosen, rejected = pair.chosen_input_ids.tolist(), pair.rejected_input_ids.tolist()
        prefix = common_prefix_length([chosen, rejected])
        separate.append(len(chosen) + len(rejected))
        shared.append(len(chosen) + len(rejected) - prefix)
        prefixes.append(prefix)
    result = {
        "data": args.data,
        "recipe": args.recipe,
        "max_length": data_config.max_length,
        "max_prompt_length": data_config.max_prompt_length,
        "pairs": len(separate),
        "mean_positions_separate": statistics.mean(separate),
        "mean_positions_shared": statistics.mean(shared),
        "mean_shared_prefix": statistics.mean(prefixes),
        "shared_over_separate": sum(shared) / sum(separate),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
