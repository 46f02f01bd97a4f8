"""Export an OpenELM checkpoint directory to one GGUF file, in the layout llama.cpp uses for OpenELM.

The layout (architecture ``openelm``) is llama.cpp's: what its converter writes and what its loader expects.

Tensors, Apple key -> GGUF name (numpy shapes; GGUF lists the dimensions in reverse)::

    transformer.token_embeddings.weight          token_embd.weight          (vocab, d)   also the output head
    transformer.layers.{i}.attn_norm.weight      blk.{i}.attn_norm.weight   (d,)
    transformer.layers.{i}.attn.qkv_proj.weight  blk.{i}.attn_qkv.weight    ((n_q + 2 n_kv) hd, d)  rows Q | K | V
    transformer.layers.{i}.attn.q_norm.weight    blk.{i}.attn_q_norm.weight (hd,)
    transformer.layers.{i}.attn.k_norm.weight    blk.{i}.attn_k_norm.weight (hd,)
    transformer.layers.{i}.attn.out_proj.weight  blk.{i}.attn_output.weight (d, n_q hd)
    transformer.layers.{i}.ffn_norm.weight       blk.{i}.ffn_norm.weight    (d,)
    transformer.layers.{i}.ffn.proj_1.weight     blk.{i}.ffn_gate.weight    (ffn_i, d)   rows [0, ffn_i)
                                                 blk.{i}.ffn_up.weight      (ffn_i, d)   rows [ffn_i, 2 ffn_i)
    transformer.layers.{i}.ffn.proj_2.weight     blk.{i}.ffn_down.weight    (d, ffn_i)
    transformer.norm.weight                      output_norm.weight         (d,)

There is no ``output.weight``: llama.cpp's OpenELM loader always reuses ``token_embd`` as the output head, so a
checkpoint with an untied head cannot be represented and is refused. Per-layer head counts and FFN widths are
arrays (``openelm.attention.head_count``, ``openelm.attention.head_count_kv``, ``openelm.feed_forward_length``),
RMSNorm epsilon is 1e-6, RoPE covers the whole head (``rope.dimension_count = head_dim``). Norms and other 1-D tensors
stay float32 whatever the output type; a matrix whose rows do not split into Q8_0 blocks of 32 falls back to f16.

Tensors are streamed: each is read from its safetensors file, converted and written before the next is read.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

from elmtune.errors import ElmtuneError
from elmtune.models.checkpoint_files import CheckpointFilesError, SafetensorsSource
from elmtune.models.configuration import OpenELMConfig
from elmtune.models.geometry import NORM_EPS
from elmtune.models.gguf_vocab import add_vocab, read_vocab, tokenizer_dir_for
from elmtune.output_paths import StagedFile

OutType = Literal["f32", "f16", "bf16", "q8_0"]

_Q = gguf.GGMLQuantizationType
OUTTYPES: dict[str, tuple[gguf.LlamaFileType, gguf.GGMLQuantizationType]] = {
    "f32": (gguf.LlamaFileType.ALL_F32, _Q.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, _Q.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, _Q.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, _Q.Q8_0),
}
"""``--outtype`` -> (``general.file_type``, type of the 2-D weight matrices)."""

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.OPENELM]


class GGUFExportError(ElmtuneError):
    """The checkpoint cannot be exported to GGUF (missing files, unexpected tensors, unsupported shape)."""


@dataclass(frozen=True)
class TensorPlan:
    """One GGUF tensor: where its values come from and how they are stored.

    Attributes:
        name: GGUF tensor name (``blk.0.ffn_gate.weight``).
        source: Checkpoint key it is read from.
        rows: Row range ``(start, stop)`` of the source, or None for the whole tensor.
        shape: Shape in numpy order (rows, columns).
        qtype: Storage type in the file.
    """

    name: str
    source: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType

    def __post_init__(self) -> None:
        if self.rows is not None and self.rows[1] - self.rows[0] != self.shape[0]:
            raise ValueError(f"{self.name}: row range {self.rows} does not match shape {self.shape}")

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data in the file."""
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape)) // block * type_size


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_gguf` wrote.

    Attributes:
        path: The GGUF file.
        outtype: Requested output type (``f32``, ``f16``, ``bf16``, ``q8_0``).
        tensor_types: GGUF tensor name -> stored type name (``F32``, ``F16``, ``BF16``, ``Q8_0``).
        parameter_count: Elements over all tensors (the tied embedding counted once).
        file_bytes: Size of the file.
        tokenizer: The ``tokenizer.model`` the vocabulary was read from.
        seconds: Wall time of the export.
        type_counts: Stored type name -> number of tensors (derived from ``tensor_types``).
    """

    path: Path
    outtype: str
    tensor_types: dict[str, str]
    parameter_count: int
    file_bytes: int
    tokenizer: Path
    seconds: float
    type_counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type_counts", dict(Counter(self.tensor_types.values())))


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    outtype: OutType | str = "f16",
    *,
    name: str | None = None,
    progress: bool = False,
    overwrite: bool = True,
) -> ExportReport:
    """Write an OpenELM checkpoint directory as a GGUF file that llama.cpp loads as architecture ``openelm``.

    Args:
        model_dir: An OpenELM checkpoint directory: ``config.json`` with the per-layer lists and ``model.safetensors``
            (or shards with ``model.safetensors.index.json``) with Apple's keys. Its own ``tokenizer.model`` is used
            when present, else the bundled Llama-2 tokenizer.
        out_path: The ``.gguf`` file to write. It is checked before anything is read, written as a hidden sibling
            (``.NAME.partial-XXXX``) and renamed into place only when complete, so a failure leaves it as it was.
        outtype: Storage of the weight matrices: ``f32``, ``f16``, ``bf16`` or ``q8_0``.
        name: ``general.name``; default: derived from the directory as llama.cpp's converter does.
        progress: Report progress on stderr (see :mod:`elmtune.progress`).
        overwrite: Replace an existing non-empty ``out_path`` (the library's default, like ``open(path, "w")``);
            ``elmtune export`` passes False unless ``--overwrite`` is given.

    Returns:
        An :class:`ExportReport`.

    Raises:
        GGUFExportError: If the directory is not an exportable OpenELM checkpoint or the output type is unknown.
        OutputPathError: ``out_path`` is a directory, exists without ``overwrite``, or its directory is not writable.
        OutputWriteError: The disk filled up while writing; nothing was left behind.
    """
    from elmtune.models.checkpoint_files import open_safetensors
    from elmtune.progress import Progress

    start = time.perf_counter()
    model_dir = Path(model_dir).expanduser()
    out_path = Path(out_path).expanduser()
    if outtype not in OUTTYPES:
        raise GGUFExportError(f"unknown GGUF output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    staged = StagedFile(out_path, overwrite=overwrite)  # checks the path before anything is read
    file_type, matrix_type = OUTTYPES[outtype]
    config = read_export_config(model_dir)
    try:
        source = SafetensorsSource.from_directory(model_dir)  # shapes and dtypes from the headers only
    except CheckpointFilesError as err:
        raise GGUFExportError(str(err)) from None
    plans = plan_tensors(config, {key: source.shape(key) for key in source.keys()}, matrix_type)
    tokenizer_dir = tokenizer_dir_for(model_dir)
    try:
        vocab = read_vocab(tokenizer_dir, config.vocab_size)
    except FileNotFoundError as err:
        raise GGUFExportError(str(err)) from None

    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    for plan in plans:
        writer.add_tensor_info(plan.name, plan.shape, np.dtype(np.float32), plan.nbytes, raw_dtype=plan.qtype)
    _add_general_metadata(writer, model_dir, name)
    add_model_metadata(writer, config, file_type)
    add_vocab(writer, vocab)

    with staged as partial:
        try:
            writer.write_header_to_file(path=partial)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            with Progress(len(plans), f"export GGUF {outtype}", "tensors", enabled=progress) as tensors_done:
                for plan in tensors_done.track(plans):
                    # One tensor at a time; the file is mapped only while reading it, so its pages do not pile up.
                    with open_safetensors(source.file(plan.source)) as handle:
                        data = _encode(handle, plan)
                    writer.write_tensor_data(data)
                    del data
        finally:
            writer.close()
        out_path = staged.commit()
    return ExportReport(
        path=out_path,
        outtype=outtype,
        tensor_types={plan.name: plan.qtype.name for plan in plans},
        parameter_count=sum(int(np.prod(plan.shape)) for plan in plans),
        file_bytes=out_path.stat().st_size,
        tokenizer=vocab.source,
        seconds=time.perf_counter() - start,
    )


def read_export_config(model_dir: Path) -> OpenELMConfig:
    """Read and vet the config of a checkpoint directory for llama.cpp's OpenELM architecture.

    Raises:
        GGUFExportError: If the directory or its config is missing, is not OpenELM, or uses a variant llama.cpp's
            OpenELM graph cannot run (untied output head, no q/k norms, no GLU, an activation other than SiLU).
    """
    if not model_dir.is_dir():
        raise GGUFExportError(f"'{model_dir}' is not a directory; pass an OpenELM checkpoint directory")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise GGUFExportError(f"'{model_dir}' has no config.json; is it an OpenELM checkpoint directory?")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise GGUFExportError(f"{config_file} is not valid JSON: {err}") from None
    if raw.get("model_type") != "openelm":
        raise GGUFExportError(f"{config_file} has model_type {raw.get('model_type')!r}; only OpenELM can be exported")
    try:
        config = OpenELMConfig.from_dict(raw)
    except (ValueError, TypeError, KeyError) as err:
        raise GGUFExportError(f"{config_file} is not a valid OpenELM config: {err}") from None
    problems = []
    if not config.share_input_output_layers:
        problems.append(
            "an untied output head (share_input_output_layers: false); llama.cpp's OpenELM always uses the token "
            "embedding as output head, so merge with tied embeddings"
        )
    if not config.normalize_qk_projections:
        problems.append("no q/k norms (normalize_qk_projections: false), which llama.cpp's OpenELM requires")
    if not config.ffn_with_glu:
        problems.append("a non-gated FFN (ffn_with_glu: false), which llama.cpp's OpenELM does not implement")
    if config.activation_fn_name not in ("swish", "silu"):
        problems.append(f"activation {config.activation_fn_name!r}; llama.cpp's OpenELM uses SiLU")
    if problems:
        raise GGUFExportError(f"cannot export {model_dir} to GGUF: it has {'; and '.join(problems)}")
    return config


def plan_tensors(
    config: OpenELMConfig, shapes: dict[str, tuple[int, ...]], matrix_type: gguf.GGMLQuantizationType
) -> list[TensorPlan]:
    """The GGUF tensors of a checkpoint, in file order, after checking its keys and shapes against the config.

    Args:
        config: The checkpoint's config.
        shapes: Checkpoint key -> shape, for every tensor of the checkpoint.
        matrix_type: Storage type of the 2-D weights.

    Raises:
        GGUFExportError: On a missing, unexpected or wrongly shaped tensor.
    """
    geometry = config.geometry
    d, names = geometry.model_dim, gguf.TENSOR_NAMES
    K = gguf.MODEL_TENSOR
    # (gguf key, layer, Apple key, expected shape, row range)
    entries: list[tuple[gguf.MODEL_TENSOR, int | None, str, tuple[int, ...], tuple[int, int] | None]] = [
        (K.TOKEN_EMBD, None, "transformer.token_embeddings.weight", (geometry.vocab_size, d), None)
    ]
    for g in geometry.layers:
        p = f"transformer.layers.{g.index}."
        ffn = g.ffn_dim
        entries += [
            (K.ATTN_NORM, g.index, p + "attn_norm.weight", (d,), None),
            (K.ATTN_QKV, g.index, p + "attn.qkv_proj.weight", g.qkv_shape, None),
            (K.ATTN_Q_NORM, g.index, p + "attn.q_norm.weight", (g.head_dim,), None),
            (K.ATTN_K_NORM, g.index, p + "attn.k_norm.weight", (g.head_dim,), None),
            (K.ATTN_OUT, g.index, p + "attn.out_proj.weight", g.out_shape, None),
            (K.FFN_NORM, g.index, p + "ffn_norm.weight", (d,), None),
            (K.FFN_GATE, g.index, p + "ffn.proj_1.weight", g.proj_1_shape, (0, ffn)),  # first half: the gate
            (K.FFN_UP, g.index, p + "ffn.proj_1.weight", g.proj_1_shape, (ffn, 2 * ffn)),  # second half: up
            (K.FFN_DOWN, g.index, p + "ffn.proj_2.weight", g.proj_2_shape, None),
        ]
    entries.append((K.OUTPUT_NORM, None, "transformer.norm.weight", (d,), None))

    expected = {key for _, _, key, _, _ in entries}
    extra = sorted(set(shapes) - expected)
    if extra:
        why = " (an untied output head: llama.cpp's OpenELM has none)" if "lm_head.weight" in extra else ""
        raise GGUFExportError(f"unexpected tensor(s) in the checkpoint: {', '.join(extra[:5])}{why}")
    missing = sorted(expected - set(shapes))
    if missing:
        raise GGUFExportError(f"the checkpoint lacks {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")

    plans = []
    for kind, layer, key, shape, rows in entries:
        if tuple(shapes[key]) != shape:
            raise GGUFExportError(f"{key} has shape {list(shapes[key])}, but config.json implies {list(shape)}")
        out_shape = (rows[1] - rows[0], *shape[1:]) if rows else shape
        name = names[kind].format(bid=layer) + ".weight"
        plans.append(TensorPlan(name, key, rows, out_shape, tensor_type(name, out_shape, matrix_type)))
    return plans


def tensor_type(name: str, shape: tuple[int, ...], matrix_type: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Storage type of one tensor: 1-D tensors and norms stay F32; Q8_0 needs rows in whole blocks, else F16."""
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return _Q.F32
    block = gguf.GGML_QUANT_SIZES[matrix_type][0]
    if shape[-1] % block:
        return _Q.F16
    return matrix_type


def add_model_metadata(writer: gguf.GGUFWriter, config: OpenELMConfig, file_type: gguf.LlamaFileType) -> None:
    """Write the ``openelm.*`` hyperparameters and ``general.file_type``."""
    geometry = config.geometry
    head_dim = int(config.head_dim)
    writer.add_block_count(len(geometry.layers))
    writer.add_context_length(int(config.max_context_length))
    writer.add_embedding_length(geometry.model_dim)
    writer.add_feed_forward_length([g.ffn_dim for g in geometry.layers])
    writer.add_head_count([g.num_query_heads for g in geometry.layers])
    writer.add_head_count_kv([g.num_kv_heads for g in geometry.layers])
    writer.add_rope_freq_base(float(config.rope_freq_constant))
    writer.add_layer_norm_rms_eps(NORM_EPS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_general_metadata(writer: gguf.GGUFWriter, model_dir: Path, name: str | None) -> None:
    """``general.type``, ``general.name``, size label and model-card fields, derived as llama.cpp's converter does."""
    total, shared, expert, experts = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, name, total)
    if metadata.name is None:
        metadata.name = model_dir.resolve().name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, experts)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def _encode(handle: object, plan: TensorPlan) -> np.ndarray:
    """Read one tensor (or its row range) as float32 and encode it in the plan's storage type."""
    import torch

    tensor_slice = handle.get_slice(plan.source)  # type: ignore[attr-defined]
    values = tensor_slice[plan.rows[0] : plan.rows[1]] if plan.rows else tensor_slice[:]
    data = values.to(torch.float32).numpy()  # (rows, cols) or (n,), float32 as llama.cpp's converter upcasts
    return gguf.quants.quantize(data, plan.qtype)


__all__ = [
    "OUTTYPES",
    "ExportReport",
    "GGUFExportError",
    "TensorPlan",
    "add_model_metadata",
    "export_gguf",
    "plan_tensors",
    "read_export_config",
    "tensor_type",
]
