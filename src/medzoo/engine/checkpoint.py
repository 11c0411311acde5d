"""Checkpoints: atomic save, safe load (``weights_only=True``), and rebuilding a model from a run folder.

A checkpoint is a ``torch.save`` of a plain dict holding only tensors, numbers, strings, lists and dicts::

    {"format_version": 1, "model": state_dict, "optimizer": ..., "scheduler": ..., "epoch": int,
     "step": int, "best_metric": float, "plan": plan.to_dict(), "rng": {...}}

It is always read back with ``torch.load(..., weights_only=True)``: a file whose pickle holds anything else
(e.g. an object whose ``__reduce__`` runs code) is refused with :class:`~medzoo.errors.CheckpointError`
and nothing in it is executed.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medzoo.errors import CheckpointError
from medzoo.planning.plan import Plan
from medzoo.utils import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_NAMES = {"best": "checkpoint_best.pt", "last": "checkpoint_last.pt"}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file + rename, flushed to disk); a crash, a kill or a full disk
    leaves the previous file intact.

    Args:
        path: destination ``.pt`` file.
        state: plain dict (tensors, numbers, strings, lists, dicts). ``format_version`` is added if absent.

    Returns:
        The path written.

    Raises:
        CheckpointError: the file could not be written (e.g. the disk is full); the previous one is kept.
    """
    state = dict(state)
    state.setdefault("format_version", FORMAT_VERSION)
    try:
        return atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write (a full disk) as RuntimeError
        lines = str(err).strip().splitlines()
        kept = "the previous checkpoint is kept; " if Path(path).exists() else ""
        raise CheckpointError(
            f"{path}: could not be written ({lines[0] if lines else type(err).__name__}; {_free(path)} free on "
            f"that disk); {kept}make room, then continue the run with --resume"
        ) from None


def _free(path: str | Path) -> str:
    try:
        return f"{shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown space"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely with ``torch.load(weights_only=True)``.

    Args:
        path: a ``.pt`` file written by :func:`save_checkpoint` (or any weights-only torch file).
        map_location: device the tensors are loaded onto.

    Returns:
        The checkpoint dict (a bare state dict is returned as ``{"model": state_dict}``).

    Raises:
        CheckpointError: the file is missing, is not a torch file, or holds objects other than plain
            tensors/containers (such a pickle is never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than plain tensors and containers "
            f"(weights-only loading rejects it; only load checkpoints you trust and re-save them as plain "
            f"state dicts). Detail: {first}"
        ) from None
    except Exception as err:  # corrupt/truncated/foreign files fail in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    if "model" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {"model": obj}
        raise CheckpointError(f"{path}: checkpoint has no 'model' entry (keys: {sorted(obj)[:8]})")
    version = obj.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this medzoo understands ({FORMAT_VERSION}); "
            "upgrade medzoo"
        )
    return obj


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile) from keys."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key.replace("._orig_mod.", ".")] = value
    return out


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """The checkpoint file of a run: ``which`` is "best", "last", or a file name/path.

    "best" falls back to "last" when no best checkpoint was written (e.g. no validation ran).
    """
    run_dir = Path(run_dir)
    if which in CHECKPOINT_NAMES:
        path = run_dir / CHECKPOINT_NAMES[which]
        if which == "best" and not path.is_file() and (run_dir / CHECKPOINT_NAMES["last"]).is_file():
            log.warning("%s: no checkpoint_best.pt, using checkpoint_last.pt", run_dir)
            path = run_dir / CHECKPOINT_NAMES["last"]
        return path
    path = Path(which)
    return path if path.is_absolute() or path.exists() else run_dir / which


def build_model(plan: Plan) -> nn.Module:
    """The (untrained) network a plan describes."""
    from medzoo.models.registry import create_model

    return create_model(
        plan.model,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        spatial_dims=plan.spatial_dims,
        **plan.model_kwargs,
    )


def load_model_from_run(
    run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, Plan]:
    """Rebuild the trained network of a run folder.

    Args:
        run_dir: a run folder written by :func:`medzoo.engine.trainer.train` (holds ``plan.json``).
        which: "best", "last", or a checkpoint file name inside the run (or a path).
        device: device the model is moved to.

    Returns:
        ``(model, plan)`` with the model in eval mode on ``device``.

    Raises:
        CheckpointError: missing/invalid plan or checkpoint, or weights that do not fit the network.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run folder not found")
    plan = Plan.load(run_dir / "plan.json")
    ckpt = load_checkpoint(checkpoint_path(run_dir, which))
    model = build_model(plan)
    state = clean_state_dict(ckpt["model"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        summary = str(err).strip().splitlines()
        raise CheckpointError(
            f"{run_dir}: the checkpoint's weights do not fit model '{plan.model}' built from plan.json "
            f"({summary[0] if summary else err}; {len(summary)} lines of mismatches)"
        ) from None
    model.to(device)
    model.eval()
    return model, plan
