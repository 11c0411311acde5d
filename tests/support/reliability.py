"""Helpers for the fault-injection tests (``tests/reliability/``): damaged files and what was logged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np


def damage(path: Path, how: str, seed: int = 0) -> None:
    """Damage a file in place: ``"truncate"`` keeps its first half, ``"garbage"`` overwrites it with as many
    random bytes (never empty, so a size check alone cannot tell)."""
    data = Path(path).read_bytes()
    if how == "truncate":
        Path(path).write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        Path(path).write_bytes(np.random.default_rng(seed).bytes(max(len(data), 16)))
    else:
        raise ValueError(how)


def warnings_about(caplog, name: str) -> list[str]:
    """The warning (or worse) lines logged that mention ``name``."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and name in r.getMessage()]


def rig_runtime_race(monkeypatch, winner: str) -> None:
    """Where ``predict`` times OpenVINO against PyTorch (``medzoo.inference.race``), make ``winner`` win."""
    import importlib

    try:
        race = importlib.import_module("medzoo.inference.race")
    except ImportError:
        return
    if hasattr(race, "time_call"):
        monkeypatch.setattr(race, "time_call", lambda model, x: 1.0 if _is_torch(model) == (winner == "torch") else 2.0)


def _is_torch(model) -> bool:
    import torch

    return isinstance(model, torch.nn.Module)
