"""Time and peak memory of ``export_gguf`` on a published OpenELM shape (random weights), next to loading the model.

Each measurement runs in its own child process, whose peak resident memory is read when it ends:
``import`` (importing elmtune and gguf only: the floor), ``load_model`` (the whole checkpoint resident) and one
export per output type (Linux ``VmHWM``). Streaming shows as export peaks near the floor plus a few times the
largest tensor, well below the checkpoint size.

    python benchmarks/gguf_export.py --preset 270M --outtypes f16,q8_0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
start = time.perf_counter()
from elmtune.models.gguf import export_gguf
from elmtune.models import load_model
mode, model_dir, out = sys.argv[1:4]
if mode == "load":
    model = load_model(model_dir)
    touched = [float(p.detach().sum()) for p in model.parameters()]  # make every (memory-mapped) weight resident
elif mode != "import":
    export_gguf(model_dir, out, mode)
# VmHWM: this process image's own high-water mark (ru_maxrss would carry over the parent's from before exec)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
peak_mib = int(status["VmHWM"].split()[0]) / 1024
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_mib}))
"""


def measure(mode: str, model_dir: Path, out: Path) -> dict[str, float]:
    """Run one child process and return its wall time and peak RSS (MiB)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(model_dir), str(out)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="270M", help="OpenELM preset to build with random weights")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "f32"], help="checkpoint dtype (hub: bf16)")
    parser.add_argument("--outtypes", default="f16,q8_0", help="comma-separated output types")
    args = parser.parse_args()

    import torch

    from elmtune.models import OpenELMConfig, OpenELMForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / args.preset
        model = OpenELMForCausalLM(OpenELMConfig.from_preset(args.preset))
        if args.dtype == "bf16":
            model = model.to(torch.bfloat16)
        model.save_pretrained(model_dir)
        largest = max(p.numel() * p.element_size() for p in model.parameters())
        del model
        checkpoint = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        print(
            f"command: python benchmarks/gguf_export.py --preset {args.preset} --dtype {args.dtype} "
            f"--outtypes {args.outtypes}"
        )
        print(f"checkpoint {checkpoint / 2**20:.0f} MiB ({args.dtype}), largest tensor {largest / 2**20:.0f} MiB")
        rows = [
            ("import", measure("import", model_dir, Path(tmp) / "x")),
            ("load_model", measure("load", model_dir, Path(tmp) / "x")),
        ]
        for outtype in args.outtypes.split(","):
            out = Path(tmp) / f"model.{outtype}.gguf"
            start = time.perf_counter()
            stats = measure(outtype, model_dir, out)
            stats["file_mib"] = out.stat().st_size / 2**20
            stats["wall"] = time.perf_counter() - start
            rows.append((f"export {outtype}", stats))
        floor = rows[0][1]["peak_mib"]
        for label, stats in rows:
            extra = f", file {stats['file_mib']:.0f} MiB" if "file_mib" in stats else ""
            print(
                f"{label:>12}: peak RSS {stats['peak_mib']:.0f} MiB (+{stats['peak_mib'] - floor:.0f} over import), "
                f"{stats['seconds']:.1f} s{extra}"
            )


if __name__ == "__main__":
    main()
