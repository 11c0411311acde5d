"""A clock that moves only when a test moves it: timing logic (budgets, wait shares) tested without the
machine's speed in the result. The project checks speed with benchmarks, never with timed unit tests."""

from __future__ import annotations

import time
from types import ModuleType


class FakeClock:
    """Stands in for ``time.monotonic`` / ``time.perf_counter`` in the modules it is installed into; every
    other ``time`` function (``sleep``, ``time``) stays real."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str):
        return getattr(time, name)

    def install(self, monkeypatch, *modules: ModuleType) -> FakeClock:
        """Make ``module.time`` this clock in each of ``modules`` for the rest of the test."""
        for module in modules:
            monkeypatch.setattr(module, "time", self)
        return self
