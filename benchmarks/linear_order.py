"""Both operand orders of a Linear layer's product on this machine, and the order elmtune's ``linear`` chooses.

    python benchmarks/linear_order.py                     # 270M preset, 1 to 2,048 rows, best of 5 rounds
    python benchmarks/linear_order.py --rows 16 --rounds 9
    python benchmarks/linear_order.py --widths 128 512 1280 2048 --rows 2 8 32 64   # OpenELM's shapes, per width
    python benchmarks/linear_order.py --decode 2 4 16     # greedy decoding of 2, 4 and 16 prompts, whole model
    python benchmarks/linear_order.py --quick             # tiny preset: seconds

For each row count M, a set of Linear weights multiplies an (M, in) fp32 input under ``torch.inference_mode``
three ways, interleaved round by round: ``F.linear(x, W)`` (``x W^T``), the reordered product ``(W x^T)^T`` copied
back to row-major (:func:`elmtune.models.linear.reordered_linear`), and :func:`elmtune.models.linear.linear`, which
takes one of the two by its rule. The weights are a preset's (every projection of every layer and the output head,
in forward order) or, with ``--widths``, four of OpenELM's shapes for each model width d: a fused projection of 2d
and of 8d outputs, a down projection from 4d, and the 32,000-token head. The table gives the best total of each and
the speed-ups over ``F.linear``; the outputs are checked to agree (fp32 rounding). Run it to check elmtune's rule
(``elmtune/models/linear.py``) on another CPU.

``--decode B ...`` instead times greedy decoding (32-token prompts, 32 new tokens) of B prompts at once, in one
process, interleaved: the preset's model as it is, the same model with every product through ``F.linear``, the
model as it is with transformers' preallocated cache (``cache_implementation="static"``) instead of the growing one,
and a transformers Llama of the same shape (``suite/shapes.py``); it prints new tokens per second, best of the
rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import elmtune.models.linear as linear_module
from elmtune.errors import ElmtuneError
from elmtune.models import load_model
from elmtune.models.linear import linear, reordered_linear
from elmtune.models.presets import PRESETS

PRODUCTS: dict[str, Callable[..., torch.Tensor]] = {
    "f_linear": F.linear,
    "reordered": reordered_linear,
    "linear": linear,
}


def weights_of(preset: str) -> list[torch.Tensor]:
    """The preset's Linear weights (out, in), in module order, from random weights of its shape."""
    model = load_model(preset).eval()
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def shaped_weights(width: int) -> dict[str, torch.Tensor]:
    """Random weights (out, in) in four of OpenELM's shapes for model width ``width``."""
    shapes = {"2d x d": (2 * width, width), "8d x d": (8 * width, width), "d x 4d": (width, 4 * width)}
    shapes["head 32000 x d"] = (32000, width)
    return {name: torch.randn(out, inp) for name, (out, inp) in shapes.items()}


def total_seconds(weights: list[torch.Tensor], inputs: dict[int, torch.Tensor], product: Callable) -> float:
    """Wall seconds to multiply every weight by its (M, in) input with ``product``."""
    start = time.perf_counter()
    with torch.inference_mode():
        for weight in weights:
            product(inputs[weight.shape[1]], weight)  # (M, out)
    return time.perf_counter() - start


def measure(weights: list[torch.Tensor], rows: int, rounds: int) -> dict:
    """Best seconds of the three products at ``rows`` rows, interleaved, after checking that they agree."""
    generator = torch.Generator().manual_seed(rows)
    inputs = {width: torch.randn(rows, width, generator=generator) for width in {w.shape[1] for w in weights}}
    with torch.inference_mode():
        for weight in weights[:3]:
            x = inputs[weight.shape[1]]
            # Entries are sums of `in` products of unit-normal values: fp32 rounding grows with the width.
            tolerance = 1e-6 * weight.shape[1]
            torch.testing.assert_close(reordered_linear(x, weight), F.linear(x, weight), rtol=1e-4, atol=tolerance)
    # Small products are repeated so that each timing covers at least ~20 ms of work.
    repeats = max(1, min(50, int(2e9 / (2 * rows * sum(w.numel() for w in weights)))))
    best = {name: float("inf") for name in PRODUCTS}
    for _ in range(rounds):
        for name, product in PRODUCTS.items():
            best[name] = min(best[name], total_seconds(weights * repeats, inputs, product) / repeats)
    return {
        "rows": rows,
        **{f"{name}_ms": 1e3 * seconds for name, seconds in best.items()},
        "reordered_speedup": best["f_linear"] / best["reordered"],
        "linear_speedup": best["f_linear"] / best["linear"],
    }


def report(label: str, weights: list[torch.Tensor], args: argparse.Namespace) -> None:
    """Measure every row count for one set of weights; print a table (or JSON lines)."""
    if not args.json:
        print(f"\n{label}\n")
        print("| rows | F.linear ms | reordered ms | elmtune linear ms | reordered speed-up | elmtune speed-up |")
        print("|---:|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        result = measure(weights, rows, args.rounds)
        if args.json:
            print(json.dumps({"weights": label, **result}))
            continue
        times = " | ".join(f"{result[f'{name}_ms']:.2f}" for name in PRODUCTS)
        print(f"| {rows} | {times} | {result['reordered_speedup']:.2f}x | {result['linear_speedup']:.2f}x |")


def decode_rates(preset: str, batches: list[int], rounds: int, new_tokens: int = 32) -> dict[int, dict[str, float]]:
    """New tokens/s of greedy decoding per batch size.

    Sides: elmtune's rule, ``F.linear`` only, elmtune with a static cache, and the same-shape Llama.
    """
    from suite.infer_sides import greedy_decode  # benchmarks/ is this script's directory
    from suite.shapes import llama_model

    models = {"elmtune": load_model(preset).eval(), "llama": llama_model(preset).eval()}
    models["f_linear"] = models["elmtune"]  # the same weights, with reordering switched off below
    models["static_cache"] = models["elmtune"]  # the same model, transformers' preallocated cache
    prompts = torch.randint(3, 32000, (max(batches), 32), generator=torch.Generator().manual_seed(0))  # (B, T)
    rule = linear_module.reorders
    best: dict[int, dict[str, float]] = {batch: {} for batch in batches}
    try:
        for _ in range(rounds):
            for batch in batches:
                for name, model in models.items():
                    linear_module.reorders = (lambda x, w: False) if name == "f_linear" else rule
                    start = time.perf_counter()
                    cache = {"cache_implementation": "static"} if name == "static_cache" else {}
                    greedy_decode(model, prompts[:batch], new_tokens, **cache)
                    rate = batch * new_tokens / (time.perf_counter() - start)
                    best[batch][name] = max(best[batch].get(name, 0.0), rate)
    finally:
        linear_module.reorders = rule
    return best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; a mistake exits 2 with one usage line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="270M", help="model preset whose Linear weights are used (default 270M)")
    parser.add_argument("--widths", type=int, nargs="+", help="model widths d: OpenELM's shapes instead of a preset")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 2048], help="row counts M")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--decode", type=int, nargs="+", metavar="B", help="time greedy decoding of B prompts")
    parser.add_argument("--quick", action="store_true", help="tiny preset, rows 1 and 16, 2 rounds")
    parser.add_argument("--json", action="store_true", help="one JSON line per weight set and row count")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.rows, args.rounds = "tiny", [1, 16], 2
    if args.rounds < 1 or min(args.rows + (args.widths or []) + (args.decode or [])) < 1:
        parser.error("--rounds and every --rows, --widths and --decode value must be at least 1")
    args.error = parser.error
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure the given row counts for a preset's weights or OpenELM's shapes at each width."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# python benchmarks/linear_order.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {torch.get_num_threads()} threads, best of {args.rounds}")
    if args.decode:
        if args.preset not in PRESETS:
            args.error(f"--preset {args.preset!r} is not a preset; choose from {', '.join(PRESETS)}")
        rates = decode_rates(args.preset, args.decode, args.rounds)
        print(
            "| prompts | elmtune tok/s | elmtune, F.linear only | elmtune, static cache | Llama "
            "| elmtune / F.linear | static / elmtune | elmtune / Llama |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for batch, r in rates.items():
            cells = f"{r['elmtune']:.1f} | {r['f_linear']:.1f} | {r['static_cache']:.1f} | {r['llama']:.1f}"
            ratios = [r["elmtune"] / r["f_linear"], r["static_cache"] / r["elmtune"], r["elmtune"] / r["llama"]]
            print(f"| {batch} | {cells} | " + " | ".join(f"{ratio:.2f}x" for ratio in ratios) + " |")
        return 0
    sets: dict[str, list[torch.Tensor]] = {}
    if args.widths:
        for width in args.widths:
            sets.update({f"width {width}, {name}": [w] for name, w in shaped_weights(width).items()})
    else:
        try:
            sets[f"{args.preset}: every Linear weight"] = weights_of(args.preset)
        except ElmtuneError as error:
            args.error(f"--preset: {error}")
    for label, weights in sets.items():
        report(label, weights, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
