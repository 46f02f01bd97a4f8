"""Both operand orders of a Linear layer's product on this machine: ``F.linear`` against elmtune's ``linear``.

    python benchmarks/linear_order.py                     # 270M preset, 1 to 2,048 rows, best of 5 rounds
    python benchmarks/linear_order.py --rows 16 --rounds 9
    python benchmarks/linear_order.py --quick             # tiny preset: seconds

For each row count M, every Linear weight of the model (the projections of every layer and the output head, in
forward order) multiplies an (M, in) fp32 input under ``torch.inference_mode``, once as ``F.linear(x, W)``
(``x W^T``) and once through :func:`elmtune.models.linear.linear` (``(W x^T)^T``, copied back to row-major), the
two interleaved round by round. The table gives the best total of each and the speed-up; the outputs are checked to
agree (fp32 rounding). elmtune reorders the product for CPU inference because of what this measures on the machines
it was developed on; run it to check another CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from elmtune.errors import ElmtuneError
from elmtune.models import load_model
from elmtune.models.linear import linear


def weights_of(preset: str) -> list[torch.Tensor]:
    """The preset's Linear weights (out, in), in module order, from random weights of its shape."""
    model = load_model(preset).eval()
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def total_seconds(weights: list[torch.Tensor], inputs: dict[int, torch.Tensor], reordered: bool) -> float:
    """Wall seconds to multiply every weight by its (M, in) input in one order."""
    product = linear if reordered else F.linear
    start = time.perf_counter()
    with torch.inference_mode():
        for weight in weights:
            product(inputs[weight.shape[1]], weight)  # (M, out)
    return time.perf_counter() - start


def measure(weights: list[torch.Tensor], rows: int, rounds: int) -> dict:
    """Best seconds of both orders at ``rows`` rows, interleaved, after checking that they agree."""
    generator = torch.Generator().manual_seed(rows)
    inputs = {width: torch.randn(rows, width, generator=generator) for width in {w.shape[1] for w in weights}}
    with torch.inference_mode():
        for weight in weights[:3]:
            x = inputs[weight.shape[1]]
            torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-4, atol=1e-4)
    plain, reordered = [], []
    for _ in range(rounds):
        plain.append(total_seconds(weights, inputs, reordered=False))
        reordered.append(total_seconds(weights, inputs, reordered=True))
    return {
        "rows": rows,
        "f_linear_ms": 1e3 * min(plain),
        "linear_ms": 1e3 * min(reordered),
        "speedup": min(plain) / min(reordered),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure the given row counts and print a table (or JSON lines)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="270M", help="model preset whose Linear weights are used (default 270M)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 2048], help="row counts M")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, rows 1 and 16, 2 rounds")
    parser.add_argument("--json", action="store_true", help="one JSON line per row count")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.rows, args.rounds = "tiny", [1, 16], 2
    if args.rounds < 1 or min(args.rows) < 1:
        parser.error("--rounds and every --rows value must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        weights = weights_of(args.preset)
    except ElmtuneError as error:
        parser.error(f"--preset: {error}")
    print(f"# python benchmarks/linear_order.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {args.preset}: {len(weights)} Linear weights, {torch.get_num_threads()} threads, best of {args.rounds}")
    if not args.json:
        print("| rows | F.linear ms | elmtune linear ms | speed-up |\n|---:|---:|---:|---:|")
    for rows in args.rows:
        result = measure(weights, rows, args.rounds)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"| {rows} | {result['f_linear_ms']:.1f} | {result['linear_ms']:.1f} | {result['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
