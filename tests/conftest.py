"""Fixtures shared by every test package: the tiny random OpenELM (and a bitsandbytes-friendly variant), tiny models of
the other decoder architectures, the bundled tokenizer, token ids, the logits helper, adapters that look trained,
one-thread torch kernels (for a test, or for whole packages), and a fresh accelerate state per test.

Subpackage ``conftest.py`` files hold only what their own tests need on top of these.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from elmtune.adapters import AdapterConfig, apply_adapter, save_adapter
from elmtune.models import OpenELMConfig, OpenELMForCausalLM, load_model, load_tokenizer

# Adapter tensors that a freshly initialised adapter leaves at their initial value (B = 0, magnitudes = norms).
_TRAINED_PARTS = ("lora_B", "lora_embedding_A", "lora_magnitude_vector", "modules_to_save")


# The tiny preset with OpenELM's real head size and FFN rounding: every Linear (and every q/k/v, gate/up row block)
# is a multiple of 64 wide and of 32 tall, as in the published models. bitsandbytes' AVX-512 CPU kernels need that
# (they get NF4 wrong for rows not a multiple of 64 and cannot repack fewer than 32 rows), so the QLoRA tests use it.
QUANTIZABLE_TINY = {"model_dim": 256, "head_dim": 64, "ffn_dim_divisor": 64}

TESTS = Path(__file__).resolve().parent
ONE_THREAD_PACKAGES = frozenset({"adapters", "build", "datasets", "inference", "merging"})
"""Test packages whose modules run torch on one thread throughout, module-scoped fixtures included."""

_OTHER_TINY = {"vocab_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
OTHER_ARCHITECTURES: dict[str, tuple[str, str, dict[str, object]]] = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {**_OTHER_TINY, "hidden_size": 32, "intermediate_size": 48, "num_key_value_heads": 2},
    ),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {**_OTHER_TINY, "hidden_size": 32, "intermediate_size": 48}),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {**_OTHER_TINY, "hidden_size": 32, "intermediate_size": 48, "pad_token_id": 0},
    ),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_OTHER_TINY, "hidden_size": 32, "intermediate_size": 48}),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {**_OTHER_TINY, "hidden_size": 32, "ffn_dim": 48, "word_embed_proj_dim": 32},
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 96}),
}
"""Tiny configs of the decoders OpenELM is compared with: ``model_type`` -> (config class, model class, fields).

Each has a 96-token vocabulary and two layers; the Llama has two key-value heads for its four query heads.
"""


def _make_tiny(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: object) -> OpenELMForCausalLM:
    torch.manual_seed(seed)
    return OpenELMForCausalLM(OpenELMConfig.from_preset("tiny", **overrides)).to(dtype).eval()


def _make_quantizable_tiny(seed: int = 0) -> OpenELMForCausalLM:
    return _make_tiny(seed, **QUANTIZABLE_TINY)


APPLE_KEYS_PER_LAYER = (
    "attn_norm.weight",
    "attn.qkv_proj.weight",
    "attn.q_norm.weight",
    "attn.k_norm.weight",
    "attn.out_proj.weight",
    "ffn_norm.weight",
    "ffn.proj_1.weight",
    "ffn.proj_2.weight",
)
"""Each decoder layer's tensor names in Apple's hub checkpoints (openelm-spec §4.3)."""


def _apple_keys(num_layers: int) -> set[str]:
    """Every tensor name of an Apple OpenELM checkpoint of ``num_layers`` layers: no ``lm_head``, no buffers."""
    keys = {"transformer.token_embeddings.weight", "transformer.norm.weight"}
    return keys | {f"transformer.layers.{i}.{name}" for i in range(num_layers) for name in APPLE_KEYS_PER_LAYER}


def _other_architecture(arch: str, seed: int = 0, **overrides: object) -> nn.Module:
    """A tiny random ``arch`` model (:data:`OTHER_ARCHITECTURES`) in fp32 and eval mode, weights from ``seed``."""
    config_name, model_name, fields = OTHER_ARCHITECTURES[arch]
    config = getattr(transformers, config_name)(**{**fields, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


def _logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturb(model: nn.Module, scale: float = 0.05, seed: int = 7) -> None:
    """Give every adapter tensor a non-trivial value (B != 0, magnitudes and norm copies moved)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in _TRAINED_PARTS):
                param.add_((torch.randn(param.shape, generator=generator) * scale).to(param))


def _trained_adapter(
    base_dir: Path, out: Path, seed: int = 7, base_name: str | None = None, scale: float = 0.05, **settings: object
) -> Path:
    """Save an adapter of ``settings`` on the checkpoint in ``base_dir`` with non-zero B (as after training)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(load_model(base_dir), AdapterConfig(**settings))
    _perturb(model, scale=scale, seed=seed)
    return save_adapter(model, out, base_name=base_name)


@pytest.fixture(scope="session")
def make_tiny() -> Callable[..., OpenELMForCausalLM]:
    """Factory for the ``tiny`` preset (4 layers, per-layer head counts and FFN widths) with seeded weights."""
    return _make_tiny


@pytest.fixture(scope="session")
def make_quantizable_tiny() -> Callable[..., OpenELMForCausalLM]:
    """Factory for the tiny preset with bitsandbytes-friendly widths (:data:`QUANTIZABLE_TINY`), seeded weights."""
    return _make_quantizable_tiny


@pytest.fixture(scope="session")
def quantizable_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved checkpoint of :func:`make_quantizable_tiny`'s model (seed 0), for commands that take a model path."""
    path = tmp_path_factory.mktemp("quantizable-tiny") / "model"
    _make_quantizable_tiny().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def apple_keys() -> Callable[[int], set[str]]:
    """``apple_keys(num_layers)``: the tensor names of Apple's checkpoint layout (the tiny preset has 4 layers)."""
    return _apple_keys


@pytest.fixture(scope="session")
def other_architecture() -> Callable[..., nn.Module]:
    """``other_architecture(arch, seed=0, **config_overrides)``: a tiny random model of another decoder family."""
    return _other_architecture


@pytest.fixture(scope="session")
def other_architectures() -> tuple[str, ...]:
    """The ``model_type`` of every :data:`OTHER_ARCHITECTURES` entry."""
    return tuple(OTHER_ARCHITECTURES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``arch`` without parametrizing it runs once per :data:`OTHER_ARCHITECTURES` entry."""
    parametrized = set()
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        parametrized |= {n.strip() for n in names.split(",")} if isinstance(names, str) else set(names)
    if "arch" in metafunc.fixturenames and "arch" not in parametrized:
        metafunc.parametrize("arch", list(OTHER_ARCHITECTURES))


@pytest.fixture
def tiny_model() -> OpenELMForCausalLM:
    """A fresh tiny OpenELM in fp32, eval mode, seed 0 (tests may change it freely)."""
    return _make_tiny()


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled OpenELM (LLaMA-2) tokenizer."""
    return load_tokenizer()


@pytest.fixture
def ids() -> torch.Tensor:
    """(2, 9) seeded token ids inside the tokenizer's vocabulary, no special tokens."""
    generator = torch.Generator().manual_seed(123)
    return torch.randint(3, 32000, (2, 9), generator=generator)


@pytest.fixture(scope="session")
def logits_of() -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """``logits_of(model, ids)``: the model's (N, L, V) logits without gradients."""
    return _logits_of


@pytest.fixture(scope="session")
def perturb() -> Callable[..., None]:
    """``perturb(model, scale=0.05, seed=7)``: move every adapter tensor off its initial value, in place."""
    return _perturb


def _adapted_tiny(**settings: object) -> nn.Module:
    """The tiny model (seed 0) with an adapter of ``settings`` (r 4, alpha 8 unless given), perturbed, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = apply_adapter(_make_tiny(), AdapterConfig(**{"r": 4, "alpha": 8, **settings}))
    _perturb(model)
    return model.eval()


@pytest.fixture(scope="session")
def adapted_tiny() -> Callable[..., nn.Module]:
    """``adapted_tiny(**adapter_settings)``: the tiny model with a non-trivial adapter (B != 0), in eval mode."""
    return _adapted_tiny


@pytest.fixture(scope="session")
def trained_adapter() -> Callable[..., Path]:
    """``trained_adapter(base_dir, out, seed=7, base_name=None, scale=0.05, **adapter_settings)`` -> saved dir."""
    return _trained_adapter


@contextlib.contextmanager
def _torch_on_one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test's torch kernels on one thread (tiny kernels run far faster so on a shared, busy CPU)."""
    with _torch_on_one_thread():
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread_packages(request: pytest.FixtureRequest) -> Iterator[None]:
    """One torch thread for every module of :data:`ONE_THREAD_PACKAGES` (their kernels are tiny)."""
    relative = request.path.resolve().relative_to(TESTS).parts
    one_thread = len(relative) > 1 and relative[0] in ONE_THREAD_PACKAGES
    with _torch_on_one_thread() if one_thread else contextlib.nullcontext():
        yield


@pytest.fixture(autouse=True)
def _fresh_accelerator_state() -> Iterator[None]:
    """Run every test with accelerate's process-wide state unset before and after it, as a new process would.

    ``Accelerator(...)`` fixes the mixed precision for the whole process; a test that trained in bf16 (TRL's
    trainers, for one) would otherwise make a later in-process ``run_training`` with fp32 fail, including one in a
    module-scoped fixture, which is set up before this fixture runs (hence the reset after each test too).
    """
    _reset_accelerator_state()
    yield
    _reset_accelerator_state()


def _reset_accelerator_state() -> None:
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
