"""``elmtune merge`` (adapter + base -> checked checkpoint) and ``elmtune merge-adapters`` (adapter arithmetic)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from elmtune.cli.options import (
    ConfigOpt,
    DeviceOpt,
    ModelArg,
    OutputOpt,
    OverwriteOpt,
    ProgressOpt,
    config_keys,
    flag_names,
    given_flags,
    name_flag,
)
from elmtune.errors import ConfigError

if TYPE_CHECKING:
    from elmtune.merging.report import MergeReport


class MergeDtype(str, Enum):
    """Output dtype of ``elmtune merge``."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class CombineMethod(str, Enum):
    """``elmtune merge-adapters --method``."""

    linear = "linear"
    cat = "cat"
    ties = "ties"
    dare_linear = "dare_linear"
    dare_ties = "dare_ties"
    svd = "svd"


class MajoritySign(str, Enum):
    """TIES sign election."""

    total = "total"
    frequency = "frequency"


MERGE_RENAMED: dict[str, str] = {"no_verify": "verify"}  # --no-verify sets verify to false
MERGE_COMMAND_OPTIONS: frozenset[str] = frozenset({"ctx", "base", "adapter_dir", "output", "config_file"})
"""Parameters of ``elmtune merge`` itself; every other parameter sets the MergeOptions field of its name."""


def merge(
    ctx: typer.Context,
    base: ModelArg,
    adapter_dir: Annotated[
        Path, typer.Argument(help="Adapter directory (elmtune or peft; LoRA or DoRA).", show_default=False)
    ],
    output: OutputOpt,
    config_file: ConfigOpt = None,
    dtype: Annotated[
        MergeDtype, typer.Option("--dtype", help="Output dtype; auto keeps the base's. Math is fp32, rounded once.")
    ] = MergeDtype.auto,
    untie_embeddings: Annotated[
        bool,
        typer.Option(
            "--untie-embeddings",
            help="Write a separate lm_head (the base embedding) so an embedding adapter merges exactly; "
            "not exportable to GGUF.",
        ),
    ] = False,
    low_memory: Annotated[
        bool,
        typer.Option("--low-memory", help="Stream the base tensor by tensor from its safetensors files."),
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the check against the unmerged adapter (not recommended).")
    ] = False,
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Largest safetensors file before sharding, e.g. 5GB or 2GiB.")
    ] = "5GB",
    device: DeviceOpt = None,
    overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """Merge ADAPTER_DIR into BASE and write a checked checkpoint directory.

    BASE is OpenELM or another transformers causal LM (Llama, OLMo, Phi-3, GPT-NeoX, OPT, GPT-2...); the output keeps
    the base's keys and config.

    Settings come from the defaults, then the --config file (MergeOptions' fields), then the flags given.

    The merged model is compared with the unmerged adapter on a probe batch; if it drifts beyond the output dtype's
    budget the command fails and leaves no output directory. An adapter module the base lacks is refused, checked or
    not. The output is built as a hidden sibling and moved into place only when complete: any failure leaves -o as
    it was.
    """
    from elmtune.merging.options import MergeOptions
    from elmtune.merging.run import merge_to_directory

    options = _merge_options(ctx, config_file, MergeOptions)
    result = merge_to_directory(base, adapter_dir, output, options)
    _print_merge_report(result.path, result.report)


def _merge_options(ctx: typer.Context, config_file: Path | None, kind: type) -> Any:
    """The merge settings: defaults, then the ``--config`` file, then the flags given; errors name the flag."""
    from elmtune.config_mapping import section_from_mapping
    from elmtune.recipe_yaml import read_config_file

    keys = config_keys(kind, ctx.params, MERGE_RENAMED, MERGE_COMMAND_OPTIONS)
    given = {keys[name]: value for name, value in given_flags(ctx).items() if name in keys}
    if "dtype" in given:
        given["dtype"] = getattr(given["dtype"], "value", given["dtype"])
    if "verify" in given:
        given["verify"] = not given["verify"]  # the flag is --no-verify
    settings = read_config_file(config_file, "merge config") if config_file is not None else {}
    settings = {"progress": True, **settings, **given}  # the command reports progress unless told not to
    if settings.get("dtype") == "auto":
        settings["dtype"] = None
    try:
        return section_from_mapping(kind, settings, "merge")
    except ConfigError as err:
        error = name_flag(err, {f"merge.{key}": flag_names(ctx)[name] for name, key in keys.items()})
        if config_file is None or (err.key or "").removeprefix("merge.") in given:
            raise error from None
        raise ConfigError(f"{config_file}: {error}", key=err.key) from None


def _print_merge_report(path: Path, report: MergeReport) -> None:
    """What ``elmtune merge`` prints: what was written, and the merge check's numbers."""
    typer.echo(
        f"wrote {path} ({report.dtype}, {len(report.changed_tensors)} tensors changed, "
        f"head {'tied' if report.head.tied else 'untied'}) in {report.seconds.total:.1f} s"
    )
    check = report.verification
    if check is None:
        typer.echo("merge check skipped (--no-verify)")
        return
    numbers = check.comparison
    typer.echo(
        f"merge check passed: max |logit diff| {numbers.max_abs_diff:.3g}, mean KL {numbers.mean_kl:.3g}, "
        f"top-1 agreement {numbers.top1_agreement:.2%} over {numbers.positions} positions"
    )
    head = check.head_change
    if head is not None:
        typer.echo(
            f"note: the tied head now reads the adapted embedding; vs the unmerged adapter: top-1 agreement "
            f"{head.top1_agreement:.2%}, mean KL {head.mean_kl:.3g} (use --untie-embeddings to keep it)"
        )


def merge_adapters(
    adapter_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="LoRA adapter directories of one base (one is enough for svd rank reduction).", show_default=False
        ),
    ],
    output: OutputOpt,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Comma-separated weight per adapter, e.g. 0.7,0.3 (default 1 each).")
    ] = None,
    method: Annotated[CombineMethod, typer.Option("--method", help="How to combine.")] = CombineMethod.linear,
    density: Annotated[float, typer.Option("--density", help="Share of entries kept by ties/dare methods.")] = 0.5,
    majority_sign: Annotated[
        MajoritySign, typer.Option("--majority-sign", help="TIES sign election.")
    ] = MajoritySign.total,
    svd_rank: Annotated[
        int | None, typer.Option("--svd-rank", help="Rank of the svd result (default: largest input rank).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the DARE random drops.")] = 0,
    allow_different_bases: Annotated[
        bool,
        typer.Option("--allow-different-bases", help="Accept adapters whose recorded base names differ (same shapes)."),
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Combine LoRA adapters of one base into one adapter (DoRA adapters are refused).

    cat is exact (ranks add up); svd is the best low-rank approximation of the weighted sum; linear, ties and the
    dare methods combine the A and B factors separately, as peft does. The report gives each method's deviation from
    the exact weighted sum. The output is moved into place only when complete: any failure leaves -o as it was.
    """
    from elmtune.adapters.config import AdapterError
    from elmtune.merging.combine import CombineOptions, combine_adapters

    parsed = None
    if weights is not None:
        try:
            parsed = tuple(float(w) for w in weights.split(","))
        except ValueError:
            raise AdapterError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    options = CombineOptions(
        method=method.value,
        weights=parsed,
        density=density,
        majority_sign=majority_sign.value,
        svd_rank=svd_rank,
        seed=seed,
        allow_different_bases=allow_different_bases,
    )
    result = combine_adapters(adapter_dirs, output, options, overwrite=overwrite)
    report = result.report
    ranks = sorted({m["rank"] for m in report["modules"].values()})
    typer.echo(
        f"wrote {result.path} ({report['method']} of {len(adapter_dirs)} adapters, {len(report['modules'])} modules, "
        f"rank {ranks[0] if len(ranks) == 1 else f'{ranks[0]}-{ranks[-1]}'}); deviation from the exact weighted sum: "
        f"max {report['max_relative_deviation']:.3g}, mean {report['mean_relative_deviation']:.3g}"
    )
