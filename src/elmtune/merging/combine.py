"""Adapter arithmetic: combine several LoRA adapters of one base into one LoRA adapter.

Every input module ``i`` contributes ``ΔW_i = s_i·B_i·A_i`` (``s_i`` its alpha/r or alpha/sqrt(r)) with weight
``w_i``. The output adapter has scaling 1 (``lora_alpha = r`` per module), so its factors carry everything.

* ``cat``: ``A = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``, ``B = [B_1, B_2, ...]``: exactly ``Σ w_i ΔW_i``, rank ``Σ r_i``.
* ``svd``: ``Σ w_i ΔW_i = U·S·Vᵀ`` truncated to rank R (default the largest input rank): ``B = U_R·S_R``,
  ``A = V_Rᵀ``: the best rank-R approximation of the weighted sum.
* ``linear``: ``A = Σ sign(w_i s_i)·sqrt|w_i s_i|·A_i``, ``B = Σ sqrt|w_i s_i|·B_i`` (equal ranks; peft's
  definition). The product contains cross terms ``B_i·A_j``, so it is *not* the weighted sum of the updates unless
  the adapters share their A (or B) factors; the report gives how far it is from it.
* ``ties`` / ``dare_linear`` / ``dare_ties``: the same factor-wise combination, with TIES (keep the ``density``
  largest entries of each factor, elect the sign per entry from the sum of the kept values (``total``) or from the
  count of signs (``frequency``), average the weighted entries that agree with it) or DARE (drop entries at random
  with probability ``1 - density`` and rescale by ``1 / density``; ``dare_ties`` then elects signs as TIES does).
  These apply peft's ``merge_utils`` to the A and to the B factors, as peft's ``add_weighted_adapter`` does.

Refused, with one-line messages, instead of being produced silently: DoRA adapters (a weighted sum of
``m·(W+sBA)/||W+sBA||`` updates is not a DoRA update; merge each one with ``elmtune merge``), a mix of rsLoRA and
standard scaling, different target modules, different base models (geometry fingerprint or recorded base name),
trained norms (``train_norms``), and, for the factor-wise methods, different ranks of one module.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from elmtune import __version__
from elmtune.adapters.adapter_dir import PEFT_KEY_PREFIX
from elmtune.adapters.config import AdapterError
from elmtune.merging.adapter import AdapterCheckpoint, AdapterTarget, parse_adapter, read_adapter
from elmtune.merging.combine_report import COMBINE_REPORT_FILE, combine_record, write_combine_report

METHODS: tuple[str, ...] = ("linear", "cat", "ties", "dare_linear", "dare_ties", "svd")
FACTORWISE: tuple[str, ...] = ("linear", "ties", "dare_linear", "dare_ties")
REPORT_FILE = COMBINE_REPORT_FILE


@dataclass(frozen=True)
class CombineOptions:
    """How to combine adapters.

    Attributes:
        method: ``linear``, ``cat``, ``ties``, ``dare_linear``, ``dare_ties`` or ``svd``.
        weights: One weight per adapter (None: 1.0 each); negative weights subtract.
        density: Share of entries kept by ``ties`` and the DARE methods, in (0, 1].
        majority_sign: TIES sign election: ``total`` (sign of the sum) or ``frequency`` (most common sign).
        svd_rank: Output rank of ``svd`` (None: the largest input rank of each module).
        seed: Seed of the DARE random drops.
        allow_different_bases: Combine adapters whose recorded base names differ (same geometry still required).
    """

    method: Literal["linear", "cat", "ties", "dare_linear", "dare_ties", "svd"] = "linear"
    weights: tuple[float, ...] | None = None
    density: float = 0.5
    majority_sign: Literal["total", "frequency"] = "total"
    svd_rank: int | None = None
    seed: int = 0
    allow_different_bases: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdapterError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
            if not all(math.isfinite(w) for w in self.weights):
                raise AdapterError(f"weights must be finite numbers, got {list(self.weights)}")
        if not 0 < self.density <= 1:
            raise AdapterError(f"density must be in (0, 1], got {self.density}")
        if self.majority_sign not in ("total", "frequency"):
            raise AdapterError(f"majority_sign must be 'total' or 'frequency', got {self.majority_sign!r}")
        if self.svd_rank is not None and (isinstance(self.svd_rank, bool) or self.svd_rank <= 0):
            raise AdapterError(f"svd_rank must be a positive integer, got {self.svd_rank!r}")
        if self.svd_rank is not None and self.method != "svd":
            raise AdapterError("svd_rank applies to method 'svd' only")


@dataclass(frozen=True)
class Combination:
    """A combined adapter and how far each module is from the exact weighted sum of the updates.

    Attributes:
        checkpoint: The new adapter (peft tensors and config, elmtune metadata).
        ranks: Module -> output rank.
        deviation: Module -> ``||ΔW - Σ w_i ΔW_i||_F / ||Σ w_i ΔW_i||_F`` (0 for ``cat``; pruning and cross terms
            for the others).
    """

    checkpoint: AdapterCheckpoint
    ranks: dict[str, int]
    deviation: dict[str, float]


def check_compatible(
    checkpoints: Sequence[AdapterCheckpoint], names: Sequence[str], options: CombineOptions
) -> list[dict[str, AdapterTarget]]:
    """Refuse combinations known to be wrong; return each adapter's updates by module name.

    Raises:
        AdapterError: One line naming the adapters and the problem.
    """
    if not checkpoints:
        raise AdapterError("give at least one adapter to combine")
    weights = options.weights
    if weights is not None and len(weights) != len(checkpoints):
        raise AdapterError(f"{len(weights)} weight(s) for {len(checkpoints)} adapter(s); give one weight per adapter")
    groups = []
    for ckpt, name in zip(checkpoints, names, strict=True):
        config = ckpt.peft_config
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise AdapterError(f"{name} is a {config.get('peft_type')} adapter; only LoRA adapters can be combined")
        if config.get("use_dora"):
            raise AdapterError(
                f"{name} is a DoRA adapter: a weighted sum of DoRA updates m·(W+sBA)/||W+sBA|| is not a DoRA update, "
                "so DoRA adapters cannot be combined; merge each into the base with `elmtune merge` instead"
            )
        parsed = parse_adapter(ckpt)
        replaced = parsed.replaced
        if replaced:
            raise AdapterError(
                f"{name} also trains {len(replaced)} full tensor(s) (e.g. {sorted(replaced)[0]}, from train_norms); "
                "only low-rank updates can be combined"
            )
        groups.append({target.module: target for target in parsed.targets})
    first, first_name = checkpoints[0], names[0]
    for ckpt, name, modules in zip(checkpoints[1:], names[1:], groups[1:], strict=True):
        if bool(ckpt.peft_config.get("use_rslora")) != bool(first.peft_config.get("use_rslora")):
            raise AdapterError(
                f"{first_name} and {name} use different scalings (rsLoRA alpha/sqrt(r) vs alpha/r); combining them "
                "would weight them inconsistently: retrain one with the other's use_rslora"
            )
        missing, extra = sorted(set(groups[0]) - set(modules)), sorted(set(modules) - set(groups[0]))
        if missing or extra:
            what = f"{missing[0]} is adapted only by {first_name}" if missing else f"{extra[0]} only by {name}"
            raise AdapterError(
                f"{first_name} and {name} adapt different modules: {what}; combine adapters with the same targets"
            )
        _check_same_base(first, first_name, ckpt, name, options.allow_different_bases)
    if options.method in FACTORWISE:
        for module in groups[0]:
            ranks = {group[module].rank for group in groups}
            if len(ranks) > 1:
                raise AdapterError(
                    f"method {options.method} combines A and B factor-wise and needs equal ranks, but {module} has "
                    f"ranks {sorted(ranks)}; use cat or svd"
                )
    return groups


def _check_same_base(
    first: AdapterCheckpoint, first_name: str, other: AdapterCheckpoint, name: str, allow: bool
) -> None:
    a, b = first.metadata or {}, other.metadata or {}
    fa, fb = (a.get("base") or {}).get("fingerprint"), (b.get("base") or {}).get("fingerprint")
    if fa and fb and fa != fb:
        raise AdapterError(f"{first_name} and {name} were trained on bases of different shapes ({fa} vs {fb})")
    na = a.get("base_model") or first.peft_config.get("base_model_name_or_path")
    nb = b.get("base_model") or other.peft_config.get("base_model_name_or_path")
    if na and nb and na != nb and not allow:
        raise AdapterError(
            f"{first_name} was trained on {na} but {name} on {nb}; updates of different bases do not add up "
            "(pass --allow-different-bases if these are the same weights under two names)"
        )


def _combine_factors(factors: Sequence[torch.Tensor], weights: torch.Tensor, options: CombineOptions) -> torch.Tensor:
    from peft.utils import merge_utils

    if options.method == "linear":
        return merge_utils.task_arithmetic(list(factors), weights)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no pruning will be performed.*")
        if options.method == "ties":
            return merge_utils.ties(list(factors), weights, options.density, options.majority_sign)
        if options.method == "dare_linear":
            return merge_utils.dare_linear(list(factors), weights, options.density)
        return merge_utils.dare_ties(list(factors), weights, options.density, options.majority_sign)


def _truncated_svd(a_cat: torch.Tensor, b_cat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` SVD truncation of ``b_cat @ a_cat`` from QR factors, never forming the (out, in) matrix.

    ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a`` give ``B·A = Q_b (R_b R_aᵀ) Q_aᵀ``; the SVD of the small core
    ``U_c S V_cᵀ`` yields ``U = Q_b U_c`` and ``V = Q_a V_c`` (all in fp64). Returns ``(A_R, B_R)`` with
    ``B_R = U_R S_R`` and ``A_R = V_Rᵀ``.
    """
    q_b, r_b = torch.linalg.qr(b_cat.double())  # (out, k), (k, Σr)
    q_a, r_a = torch.linalg.qr(a_cat.double().T)  # (in, k'), (k', Σr)
    u_c, s, vh_c = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core (k, k')
    rank = min(rank, s.shape[0])
    return vh_c[:rank] @ q_a.T, (q_b @ u_c[:, :rank]) * s[:rank]  # (R, in), (out, R)


def _relative_deviation(a_new: torch.Tensor, b_new: torch.Tensor, a_cat: torch.Tensor, b_cat: torch.Tensor) -> float:
    """``||B_new A_new - B_cat A_cat||_F / ||B_cat A_cat||_F`` from r x r Gram matrices (fp64), without (out, in)."""

    def frobenius_sq(b: torch.Tensor, a: torch.Tensor) -> float:  # ||B A||_F^2 = sum((BᵀB) * (A Aᵀ))
        b, a = b.double(), a.double()
        return float(((b.T @ b) * (a @ a.T)).sum())

    error_sq = frobenius_sq(torch.cat([b_new, b_cat], dim=1), torch.cat([a_new, -a_cat], dim=0))
    norm_sq = frobenius_sq(b_cat, a_cat)
    error = math.sqrt(max(error_sq, 0.0))
    return error / math.sqrt(norm_sq) if norm_sq > 0 else error


@torch.no_grad()
def combine_checkpoints(
    checkpoints: Sequence[AdapterCheckpoint], options: CombineOptions, names: Sequence[str] | None = None
) -> Combination:
    """Combine adapters (see the module docstring for each method's formula).

    Args:
        checkpoints: The adapters (:func:`elmtune.merging.read_adapter`).
        options: Method and weights.
        names: How to name the adapters in messages (default ``adapter 1``, ``adapter 2``...).

    Returns:
        The :class:`Combination`.

    Raises:
        AdapterError: A combination known to be wrong (see the module docstring).
    """
    names = list(names) if names is not None else [f"adapter {i + 1}" for i in range(len(checkpoints))]
    groups = check_compatible(checkpoints, names, options)
    weights = options.weights or tuple(1.0 for _ in checkpoints)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    deviation: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        for module in groups[0]:
            a_list, b_list, scaled = [], [], []
            embedding = False
            for group, weight in zip(groups, weights, strict=True):
                target = group[module]
                a_list.append(target.a)  # fp32 (r, in); an embedding's (r, vocab)
                b_list.append(target.b)  # fp32 (out, r); an embedding's (d, r)
                scaled.append(weight * target.scale)
                embedding = target.embedding
            a_cat = torch.cat([ws * a for ws, a in zip(scaled, a_list, strict=True)], dim=0)  # (Σr, in)
            b_cat = torch.cat(b_list, dim=1)  # (out, Σr): b_cat @ a_cat is exactly Σ w_i ΔW_i
            if options.method == "cat":
                a_new, b_new = a_cat, b_cat
            elif options.method == "svd":
                rank = options.svd_rank or max(a.shape[0] for a in a_list)
                a_new, b_new = _truncated_svd(a_cat, b_cat, rank)
            else:
                weights_a = torch.tensor([math.copysign(math.sqrt(abs(ws)), ws) for ws in scaled])
                weights_b = torch.tensor([math.sqrt(abs(ws)) for ws in scaled])
                a_new = _combine_factors(a_list, weights_a, options)  # (r, in)
                b_new = _combine_factors(b_list, weights_b, options)  # (out, r)
            a_new, b_new = a_new.float().contiguous(), b_new.float().contiguous()
            deviation[module] = _relative_deviation(a_new, b_new, a_cat, b_cat)
            ranks[module] = a_new.shape[0]
            if embedding:
                tensors[f"{PEFT_KEY_PREFIX}{module}.lora_embedding_A"] = a_new
                tensors[f"{PEFT_KEY_PREFIX}{module}.lora_embedding_B"] = b_new
            else:
                tensors[f"{PEFT_KEY_PREFIX}{module}.lora_A.weight"] = a_new
                tensors[f"{PEFT_KEY_PREFIX}{module}.lora_B.weight"] = b_new
    return Combination(
        checkpoint=AdapterCheckpoint(
            tensors, _combined_config(checkpoints[0], ranks), _combined_metadata(checkpoints, names, options)
        ),
        ranks=ranks,
        deviation=deviation,
    )


def _combined_config(first: AdapterCheckpoint, ranks: dict[str, int]) -> dict[str, Any]:
    """The peft config of the result: the first input's, with scaling 1 for every module (alpha = rank)."""
    common = Counter(ranks.values()).most_common(1)[0][0]
    config = dict(first.peft_config)
    config.update(
        r=common,
        lora_alpha=float(common),
        rank_pattern={re.escape(m): r for m, r in ranks.items() if r != common},
        alpha_pattern={re.escape(m): float(r) for m, r in ranks.items() if r != common},
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
        inference_mode=True,
    )
    return config


def _combined_metadata(
    checkpoints: Sequence[AdapterCheckpoint], names: Sequence[str], options: CombineOptions
) -> dict[str, Any] | None:
    first = checkpoints[0].metadata
    if first is None:
        return None
    metadata = dict(first)
    metadata.update(
        elmtune_version=__version__,
        adapter_config=None,  # ranks and scaling no longer follow one AdapterConfig
        converted_init=None,
        dora_embedding_as_lora=[],
        combination={
            "method": options.method,
            "weights": list(options.weights or [1.0] * len(checkpoints)),
            "density": options.density if options.method in ("ties", "dare_linear", "dare_ties") else None,
            "majority_sign": options.majority_sign if options.method in ("ties", "dare_ties") else None,
            "svd_rank": options.svd_rank,
            "seed": options.seed if options.method.startswith("dare") else None,
            "sources": list(names),
        },
    )
    return metadata


@dataclass(frozen=True)
class CombineResult:
    """What :func:`combine_adapters` wrote: the adapter directory and its report."""

    path: Path
    report: dict[str, Any]


def combine_adapters(
    adapter_dirs: Sequence[str | Path], out_dir: str | Path, options: CombineOptions, *, overwrite: bool = False
) -> CombineResult:
    """Combine adapter directories into a new PEFT-format adapter directory, with its report.

    The report: ``combine_report.json`` (inputs, weights, method, each module's rank and deviation; see
    :mod:`elmtune.merging.combine_report`) rendered to ``report.md`` and a self-contained ``report.html``.

    The result loads with :func:`elmtune.adapters.load_adapter` or plain peft and merges with ``elmtune merge``. The
    output path is checked before any adapter is read; the directory is built as a hidden sibling and renamed into
    place only when complete, so a failure leaves ``out_dir`` as it was.

    Raises:
        AdapterError: A combination known to be wrong (see the module docstring).
        OutputPathError: ``out_dir`` exists and is not empty (without ``overwrite``), is a file, or is not writable.
        OutputWriteError: The disk filled up while writing; nothing was left behind.
    """
    from safetensors.torch import save_file

    from elmtune.adapters.adapter_dir import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE
    from elmtune.output_paths import StagedDirectory

    paths = [Path(d).expanduser() for d in adapter_dirs]
    staged = StagedDirectory(out_dir, overwrite=overwrite)
    checkpoints = [read_adapter(p) for p in paths]
    combination = combine_checkpoints(checkpoints, options, names=[str(p) for p in paths])
    report = combine_record(options, [str(p) for p in paths], checkpoints, combination)
    with staged as tmp:
        ckpt = combination.checkpoint
        save_file(dict(ckpt.tensors), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(ckpt.peft_config, indent=2, sort_keys=True) + "\n")
        if ckpt.metadata is not None:
            (tmp / METADATA_FILE).write_text(json.dumps(ckpt.metadata, indent=2) + "\n")
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        write_combine_report(tmp)
        path = staged.commit()
    return CombineResult(path=path, report=report)


__all__ = [
    "FACTORWISE",
    "METHODS",
    "CombineOptions",
    "CombineResult",
    "Combination",
    "check_compatible",
    "combine_adapters",
    "combine_checkpoints",
]
