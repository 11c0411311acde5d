"""Seeds and random-number-generator states, so that runs repeat and resume exactly.

Each epoch re-seeds every generator from ``(seed, epoch, rank)`` (:func:`seed_epoch`), so a run resumed at
an epoch boundary draws the same batches and the same dropout masks as an uninterrupted one. The full
generator states are also saved in checkpoints (:func:`capture_rng` / :func:`restore_rng`) as plain tensors
and lists, loadable with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 31-bit seed mixed from integers (e.g. ``(seed, epoch, rank)``) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> int:
    """Re-seed every generator for ``epoch`` on ``rank``; returns the seed for the epoch's data sampler."""
    seed_everything(derive_seed(seed, epoch, rank, 0))
    return derive_seed(seed, epoch, rank, 1)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic algorithms (where PyTorch has them) or cuDNN autotuning for speed."""
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = device.type == "cuda"


def capture_rng() -> dict[str, Any]:
    """Every generator's state as tensors / numbers / lists (checkpoint-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
