"""Check that Apple's hub modeling code computes elmtune's model: the same weights give the same logits.

The benchmark's Apple rows compare speed, so they are only fair if Apple's side computes the same function. This
script builds an elmtune preset (random weights, seed 0, norm weights drawn away from one so that a misplaced norm
shows), saves its weights and the logits of two rows (one full, one left-padded) and loads the weights into Apple's
``OpenELMForCausalLM`` in a child process, under ``--apple-python`` when given (Apple's code does not run on
transformers 5; the child imports no elmtune). Prints one JSON line; exits 1 when the logits differ by more than
``--tolerance`` or a weight name does not match::

    python benchmarks/apple_code_check.py --apple-code DIR --apple-python OLD_ENV/bin/python
    python benchmarks/apple_code_check.py --apple-code DIR --preset 270M
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from suite.apple_code import missing_files, save_weights  # noqa: E402


def reference(preset: str, directory: Path) -> None:
    """elmtune's side: the preset's weights, two rows of token ids, their mask and logits, as safetensors files."""
    import torch
    from safetensors.torch import save_file

    from elmtune.models import OpenELMConfig, OpenELMForCausalLM
    from elmtune.models.presets import PRESETS

    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig(**PRESETS[preset])).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.5 * torch.randn_like(param))
        ids = torch.randint(3, model.config.vocab_size, (2, 40))  # (B, T)
        mask = torch.ones_like(ids)  # (B, T)
        mask[1, :7] = 0  # the second row left-padded
        logits = model(ids, attention_mask=mask).logits  # (B, T, V)
    save_weights(model, directory / "weights.safetensors")
    save_file({"ids": ids, "mask": mask, "logits": logits}, str(directory / "reference.safetensors"))


def apple_side(code: Path, preset: str, directory: Path) -> dict:
    """Apple's side (the child process): the same weights in Apple's model, and the largest logit differences."""
    import torch
    from safetensors.torch import load_file
    from suite.apple_code import apple_model

    model = apple_model(code, preset).eval()
    missing, unexpected = model.load_state_dict(load_file(str(directory / "weights.safetensors")), strict=False)
    ref = load_file(str(directory / "reference.safetensors"))
    with torch.no_grad():
        logits = model(ref["ids"], attention_mask=ref["mask"], use_cache=False).logits  # (B, T, V)
    kept = ref["mask"].bool()  # padded positions predict nothing
    return {
        "max_abs_diff": (logits - ref["logits"])[kept].abs().max().item(),
        "max_abs_logit": ref["logits"][kept].abs().max().item(),
        "missing": [k for k in missing if not k.endswith("lm_head.weight")],
        "unexpected": list(unexpected),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apple-code", type=Path, required=True, help="directory with Apple's two modeling files")
    parser.add_argument("--apple-python", type=Path, help="the Python to run Apple's code under (default: this one)")
    parser.add_argument("--preset", default="tiny", help="elmtune preset (random weights); default tiny")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted logit difference")
    parser.add_argument("--side", type=Path, help=argparse.SUPPRESS)  # the child: the files' directory
    args = parser.parse_args(argv)
    if missing_files(args.apple_code):
        parser.error(f"--apple-code {args.apple_code} lacks {', '.join(missing_files(args.apple_code))}")
    if args.side is not None:
        print(json.dumps(apple_side(args.apple_code, args.preset, args.side)), flush=True)
        return 0
    python = str(args.apple_python.absolute()) if args.apple_python else sys.executable
    if args.apple_python and not os.access(python, os.X_OK):
        parser.error(f"--apple-python {args.apple_python} is not an executable file")
    with tempfile.TemporaryDirectory(prefix="elmtune-apple-check-") as scratch:
        reference(args.preset, Path(scratch))
        command = [python, __file__, "--apple-code", str(args.apple_code), "--preset", args.preset, "--side", scratch]
        child = subprocess.run(command, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        print(f"error: Apple's side failed:\n{child.stderr[-3000:]}", file=sys.stderr)
        return 1
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["same_model"] = not result["missing"] and not result["unexpected"]
    result["same_model"] = result["same_model"] and result["max_abs_diff"] <= args.tolerance
    print(json.dumps({"preset": args.preset, "tolerance": args.tolerance, **result}), flush=True)
    return 0 if result["same_model"] else 1


if __name__ == "__main__":
    sys.exit(main())
