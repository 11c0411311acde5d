"""Fixtures shared by every test module; plain helpers live in ``tests/support/``."""

from __future__ import annotations

import pytest

from support.inference import pretend_native_bf16


@pytest.fixture
def fp32_on_cpu(monkeypatch):
    """Predictions in fp32 on any CPU: ``amp="auto"`` runs bf16 on CPUs with native bf16 (AMX, AVX512-BF16),
    which would make tests that compare runtimes or references at equal precision depend on the machine.
    The bf16 default has its own tests (``test_inference_amp.py``)."""
    pretend_native_bf16(monkeypatch, False)
