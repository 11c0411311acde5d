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


_DRIVER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from support.inference import THRESHOLD, ThresholdNet
from medzoo.models import registry
registry._REGISTRY[THRESHOLD] = registry._Entry(
    ThresholdNet, registry.ModelCard(name=THRESHOLD, spatial_dims=(2, 3), typical_patch=(8, 8, 8)))
pause = float(os.environ.get("MEDZOO_TEST_STEP_PAUSE", "0"))
if pause:  # slower training steps, so a test can act while a run trains
    from medzoo.engine.trainer import Trainer
    step = Trainer.train_step
    def slow_step(*args, **kwargs):
        time.sleep(pause)
        return step(*args, **kwargs)
    Trainer.train_step = slow_step
from medzoo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def medzoo_command(*args: str) -> list[str]:
    """``medzoo ARGS`` as a child process's argv, with the threshold stand-in network registered (see
    :mod:`support.inference`) and, when ``MEDZOO_TEST_STEP_PAUSE`` is set, that many seconds of sleep
    before each training step."""
    import sys

    tests = str(Path(__file__).resolve().parents[1])
    return [sys.executable, "-c", _DRIVER.format(tests=tests), *map(str, args)]


def error_lines(stderr: str, command: str) -> list[str]:
    """The ``medzoo COMMAND: error: ...`` lines of a child's stderr (asserting it shows no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith(f"medzoo {command}: error:")]


def visible_files(folder: Path) -> list[str]:
    """Names of the files a user sees in ``folder`` (hidden temporary files excluded)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
