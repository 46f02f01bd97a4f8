"""The ``preference`` evaluation protocol's scoring: each pair's shared prompt once against separate rows.

Scores the same tokenised pairs two ways in one process, interleaved, best of ``--rounds``: elmtune's
:func:`~elmtune.evaluation.score_pairs` (each pair one row, its prompt computed once), and a baseline that runs the
chosen and the rejected sequences as separate rows over the same batches (the layout before). Both score base +
adapter and the base with the adapter off, as the protocol does. Prints one JSON line: the seconds of each, their
ratio and the largest difference between the two in a summed log-probability. Run alone::

    python benchmarks/preference_eval.py               # 270M (random weights), 16 bundled UltraFeedback pairs
    python benchmarks/preference_eval.py --quick       # tiny, 4 pairs: seconds
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "src" / "elmtune" / "samples" / "ultrafeedback_binarized_sample.jsonl"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="270M", help="OpenELM preset (random weights)")
    parser.add_argument("--data", default=str(SAMPLE), help="a preference file")
    parser.add_argument("--pairs", type=int, default=16, help="the first N usable pairs")
    parser.add_argument("--batch", type=int, default=4, help="pairs per forward pass")
    parser.add_argument("--max-length", type=int, default=1024, help="Apple's Instruct recipe: 1024")
    parser.add_argument("--max-prompt-length", type=int, default=512, help="Apple's Instruct recipe: 512")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 4 pairs of at most 128 tokens")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.pairs, args.max_length, args.max_prompt_length, args.rounds = "tiny", 4, 128, 64, 1
    return args


def separate_rows(model, pairs, batch_size: int):  # noqa: ANN001, ANN201 - torch objects, imported lazily
    """Per pair ``(tuned chosen, tuned rejected, base chosen, base rejected)``: two rows per pair, longest first."""
    import torch

    from elmtune.adapters import disable_adapters
    from elmtune.datasets.preference import collate_preference
    from elmtune.finetune.objectives import _pair_logps  # the separate rows of --no-share-prompt training
    from elmtune.models import PAD_TOKEN_ID

    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i]))
    scores = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = collate_preference([pairs[i] for i in indices], pad_token_id=PAD_TOKEN_ID)
            tuned = _pair_logps(model, batch, None)[0]  # (2B,) chosen first
            with disable_adapters(model) as base_model:
                base = _pair_logps(base_model, batch, None)[0]
            for row, i in enumerate(indices):
                n = len(indices)
                scores[i] = (tuned[row], tuned[n + row], base[row], base[n + row])
    return [tuple(float(value) for value in scores[i]) for i in range(len(pairs))]


def main() -> None:
    """Time both layouts and print the JSON line."""
    args = _arguments()
    import torch

    from elmtune.adapters import AdapterConfig, apply_adapter
    from elmtune.evaluation import EvalConfig, PreferenceSettings, score_pairs
    from elmtune.evaluation.preference import read_preference_sources, tokenize_source
    from elmtune.models import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    (source,) = read_preference_sources(EvalConfig(protocol="preference", data=(args.data,), limit=args.pairs))
    settings = PreferenceSettings(max_length=args.max_length, max_prompt_length=args.max_prompt_length)
    pairs = tokenize_source(source, load_tokenizer(), settings).pairs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(args.preset), AdapterConfig(r=16, alpha=16, targets=("apple",))).eval()
    with torch.no_grad():  # B away from zero, so the tuned and the base scores differ
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))

    seconds: dict[str, list[float]] = {"shared": [], "separate": []}
    results: dict[str, list[tuple[float, ...]]] = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        shared = score_pairs(model, pairs, args.batch)
        seconds["shared"].append(time.perf_counter() - start)
        results["shared"] = [(t.chosen, t.rejected, b.chosen, b.rejected) for t, b in shared]
        start = time.perf_counter()
        results["separate"] = separate_rows(model, pairs, args.batch)
        seconds["separate"].append(time.perf_counter() - start)
    difference = max(
        abs(a - b)
        for x, y in zip(results["shared"], results["separate"], strict=True)
        for a, b in zip(x, y, strict=True)
    )
    best = {name: min(values) for name, values in seconds.items()}
    tokens = sum(len(pair.chosen_input_ids) + len(pair.rejected_input_ids) for pair in pairs)
    print(
        json.dumps(
            {
                "preset": args.preset,
                "pairs": len(pairs),
                "tokens": tokens,
                "batch": args.batch,
                "rounds": args.rounds,
                "seconds": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
                "shared_over_separate": best["shared"] / best["separate"],
                "max_abs_logp_difference": difference,
            }
        )
    )


if __name__ == "__main__":
    main()
