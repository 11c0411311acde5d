"""medzoo.perf.cpu_has_native_bf16: the CPU's bf16 instructions, and a oneDNN ISA cap that forbids them."""

from __future__ import annotations

import pytest
import torch

import medzoo.perf as perf


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU has AMX tiles; no ISA cap in the environment."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("cap", ["AVX2", "avx512_core", "AVX512_CORE_VNNI", "AVX2_VNNI_2", "SSE41"])
def test_an_isa_cap_below_bf16_means_no_native_bf16(bf16_cpu, monkeypatch, cap):
    assert perf.cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert not perf.cpu_has_native_bf16()


@pytest.mark.parametrize("cap", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "avx10_1_512_amx_fp16", "ALL", ""])
def test_an_isa_cap_that_keeps_bf16_changes_nothing(bf16_cpu, monkeypatch, cap):
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", cap)
    assert perf.cpu_has_native_bf16()


def test_a_cpu_without_bf16_instructions_has_none(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert not perf.cpu_has_native_bf16()
