"""The device and precision policy, with device availability mocked."""

import pytest
import torch

from elmtune.errors import ElmtuneError
from elmtune.models import device as dev


@pytest.fixture
def machine(monkeypatch):
    def setup(cuda=False, bf16=False, mps=False, torch_version="2.13.0", macos14=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *a: macos14, raising=False)
        monkeypatch.setattr(torch, "__version__", torch_version)

    return setup


def test_auto_device_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=True, mps=True)
    assert dev.resolve_device("auto").type == "cuda"
    machine(cuda=False, mps=True)
    assert dev.resolve_device("auto").type == "mps"
    machine()
    assert dev.resolve_device("auto").type == "cpu"


def test_unavailable_explicit_device_is_a_clear_error(machine):
    machine()
    with pytest.raises(ElmtuneError, match="CUDA is not available"):
        dev.resolve_device("cuda")
    with pytest.raises(ElmtuneError, match="MPS is not available"):
        dev.resolve_device("mps")


def test_cuda_uses_bf16_where_supported_else_fp16_with_scaler(machine):
    machine(cuda=True, bf16=True)
    plan = dev.plan_precision(torch.device("cuda"))
    assert (plan.precision, plan.accelerate_mixed_precision, plan.base_dtype) == ("bf16", "bf16", torch.bfloat16)
    machine(cuda=True, bf16=False)
    plan = dev.plan_precision(torch.device("cuda"))
    assert (plan.precision, plan.accelerate_mixed_precision, plan.base_dtype) == ("fp16", "fp16", torch.float16)
    with pytest.raises(ElmtuneError, match="does not support bf16"):
        dev.plan_precision(torch.device("cuda"), "bf16")


def test_mps_autocast_only_where_supported(machine):
    machine(mps=True, torch_version="2.3.1")
    plan = dev.plan_precision(torch.device("mps"))
    assert plan.precision == "fp32" and "torch >= 2.5" in plan.note and "\n" not in plan.note
    plan = dev.plan_precision(torch.device("mps"), "bf16")
    assert plan.precision == "fp32" and "not supported on MPS" in plan.note
    machine(mps=True, torch_version="2.6.0", macos14=False)
    assert dev.plan_precision(torch.device("mps")).precision == "fp16"
    assert dev.plan_precision(torch.device("mps"), "bf16").precision == "fp32"
    machine(mps=True, torch_version="2.6.0", macos14=True)
    plan = dev.plan_precision(torch.device("mps"))
    assert plan.precision == "bf16" and plan.base_dtype == torch.bfloat16


def test_cpu_defaults_to_fp32_allows_bf16_refuses_fp16(machine):
    machine()
    cpu = torch.device("cpu")
    plan = dev.plan_precision(cpu)
    assert plan.precision == "fp32" and plan.accelerate_mixed_precision == "no" and plan.base_dtype == torch.float32
    plan = dev.plan_precision(cpu, "bf16")
    assert plan.accelerate_mixed_precision == "bf16" and plan.base_dtype == torch.float32
    assert dev.plan_precision(cpu, "bf16", base_dtype="bf16").base_dtype == torch.bfloat16
    with pytest.raises(ElmtuneError, match="fp16 training is not supported on the CPU"):
        dev.plan_precision(cpu, "fp16")
