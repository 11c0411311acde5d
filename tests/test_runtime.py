"""medzoo.runtime: the one precision / layout / environment policy for training and prediction."""

from __future__ import annotations

import pytest
import torch

from medzoo import runtime
from medzoo.errors import ConfigError


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU has AMX tiles; no ISA cap in the environment."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("cap", ["AVX2", "avx512_core", "AVX512_CORE_VNNI", "AVX2_VNNI_2", "SSE41"])
def test_an_isa_cap_below_bf16_means_no_native_bf16(bf16_cpu, monkeypatch, cap):
    assert runtime.cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert not runtime.cpu_has_native_bf16()


@pytest.mark.parametrize("cap", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "avx10_1_512_amx_fp16", "ALL", ""])
def test_an_isa_cap_that_keeps_bf16_changes_nothing(bf16_cpu, monkeypatch, cap):
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)
    assert runtime.cpu_has_native_bf16()


def test_a_cpu_without_bf16_instructions_has_none(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert not runtime.cpu_has_native_bf16()


def _pretend_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)


@pytest.mark.parametrize("purpose", ["training", "predicting"])
def test_one_precision_rule_for_training_and_prediction(monkeypatch, caplog, purpose):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native in (False, True):
        _pretend_native_bf16(monkeypatch, native)
        assert runtime.autocast_dtype("auto", cpu, purpose) == (torch.bfloat16 if native else None)
        assert runtime.autocast_dtype("bf16", cpu, purpose) == torch.bfloat16  # asked for: kept
        assert runtime.autocast_dtype("none", cpu, purpose) is None
    with caplog.at_level("WARNING", logger="medzoo.runtime"):
        assert runtime.autocast_dtype("fp16", cpu, purpose) is None  # fp16 is for CUDA
    assert f"{purpose} in fp32" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.autocast_dtype("auto", gpu, purpose) == torch.bfloat16
    assert runtime.autocast_dtype("fp16", gpu, purpose) == torch.float16
    assert runtime.autocast_dtype("none", gpu, purpose) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.autocast_dtype("auto", gpu, purpose) == torch.float16
    assert runtime.autocast_dtype("auto", torch.device("meta"), purpose) is None
    with pytest.raises(ConfigError, match="amp must be one of"):
        runtime.autocast_dtype("fp8", cpu, purpose)


def test_the_callers_ask_the_runtime(monkeypatch):
    """The trainer, the predictor and the backend race give the same answer, because they ask one rule."""
    from medzoo.engine.config import TrainConfig
    from medzoo.engine.trainer import amp_dtype
    from medzoo.inference.backends import _torch_cpu_dtype
    from medzoo.inference.predictor import inference_amp_dtype

    for native in (False, True):
        _pretend_native_bf16(monkeypatch, native)
        for amp in ("auto", "bf16", "none"):
            want = runtime.autocast_dtype(amp, "cpu")
            assert amp_dtype(TrainConfig(amp=amp), torch.device("cpu")) == want
            assert inference_amp_dtype(amp, torch.device("cpu"), torch.nn.Identity()) == want
            assert _torch_cpu_dtype(amp) == want


@pytest.mark.parametrize("setting, card, device, want", [
    ("auto", True, "cpu", torch.channels_last_3d), ("auto", False, "cpu", None), ("auto", True, "cuda", None),
    ("channels_last", False, "cuda", torch.channels_last_3d), ("contiguous", True, "cpu", None),
])
def test_memory_format_follows_the_card_on_the_cpu(setting, card, device, want):
    assert runtime.preferred_memory_format(setting, 3, device, card) == want
    two_d = runtime.preferred_memory_format(setting, 2, device, card)
    assert two_d == (None if want is None else torch.channels_last)
    assert runtime.preferred_memory_format(setting, 1, device, card) is None
    with pytest.raises(ConfigError, match="memory_format must be one of"):
        runtime.preferred_memory_format("sideways", 3, device, card)


def test_environment_variables_are_declared_parsed_and_documented(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("MEDZOO_FUSED_KERNELS", "off")
    assert runtime.env("MEDZOO_FUSED_KERNELS") is False and runtime.fused_kernels() is None
    monkeypatch.setenv("MEDZOO_FUSED_KERNELS", "maybe")  # not a yes/no word: the default
    assert runtime.env("MEDZOO_FUSED_KERNELS") is True
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert runtime.distributed_env().world_size == 4 and runtime.distributed_env().rank == 2
    with pytest.raises(KeyError):
        runtime.env("MEDZOO_NOT_DECLARED")
    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert runtime.environment_table() in docs.read_text(encoding="utf-8"), (
        "docs/configuration.md must hold medzoo.runtime.environment_table() under 'Environment variables'")


def test_compile_switch(monkeypatch) -> None:
    from torch import nn

    monkeypatch.setenv("MEDZOO_COMPILE", "1")
    assert runtime.compile_requested() is True
    assert runtime.compile_requested(False) is False
    monkeypatch.setenv("MEDZOO_COMPILE", "0")
    model = nn.Linear(2, 2)
    assert runtime.maybe_compile(model) is model


def test_device_resolution_gives_a_rank_its_own_gpu():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert runtime.resolve_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    assert runtime.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
