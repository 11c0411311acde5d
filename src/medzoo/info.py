"""What a trained model is: :func:`run_info` on a run folder, a ``.medzoo`` file or a cross-validation parent.

It reads only what the run wrote (``plan.json``, ``config.json``, ``metrics.csv``, ``splits.json``, the
checkpoint's counters; for a cross-validation the folds' progress, ``crossval.json`` and
``postprocessing.json``) and asks the installed packages what ``medzoo predict`` would do with it on this
machine; nothing is computed, exported or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medzoo.errors import CheckpointError
from medzoo.planning.plan import Plan
from medzoo.utils import read_json_object

__all__ = ["crossval_info", "run_info"]


def run_info(model: str | Path, checkpoint: str = "best") -> dict[str, Any]:
    """A JSON-ready description of a run folder, a packed model or a cross-validation parent.

    Args:
        model: a run folder, a ``.medzoo`` file or a cross-validation parent (``medzoo train --fold all``).
        checkpoint: the checkpoint ``predict`` would be given ("best", "last" or a file).

    Returns:
        ``{"source", "data", "plan", "training", "versions", "predict"}``: where it comes from; the dataset,
        layout, modalities, labels and split sizes; network, patch, spacing and normalisation; epochs, steps,
        seconds and the best and final validation Dice per class; the versions it was packed with and those
        installed; and the checkpoint, device, backend, precision and layout ``predict`` would use. For a
        cross-validation parent: ``{"source", "data", "plan", "folds", "crossval", "postprocessing",
        "predict"}`` (see :func:`crossval_info`).

    Raises:
        CheckpointError: not a run folder (no ``plan.json``) or a damaged ``.medzoo`` file.
    """
    from medzoo.engine.crossval import is_crossval_dir
    from medzoo.packaging import environment_versions, is_packed, open_model, read_manifest

    model = Path(model)
    packed = is_packed(model)
    if not model.exists():
        raise CheckpointError(f"{model}: not found (give a run folder or a .medzoo file)")
    if not packed and is_crossval_dir(model):
        return crossval_info(model, checkpoint)
    run_dir = open_model(model)
    if not run_dir.is_dir():
        raise CheckpointError(f"{model}: give a run folder or a .medzoo file")
    plan = Plan.load(run_dir / "plan.json")
    config = read_json_object(run_dir / "config.json")
    manifest = read_manifest(model) if packed else {}
    source: dict[str, Any] = {"path": str(model), "kind": "packed model" if packed else "run folder"}
    if packed:
        source.update(unpacked_to=str(run_dir), packed_checkpoint=manifest.get("checkpoint"),
                      with_optimizer=manifest.get("with_optimizer", False))
    return {
        "source": source,
        "data": _data(plan, config, run_dir, manifest.get("split_sizes") or {}),
        "plan": _plan(plan),
        "training": _training(run_dir, config, plan, manifest),
        "versions": {"packed_with": read_json_object(run_dir / "versions.json") or None,
                     "installed": environment_versions()},
        "predict": _predict(run_dir, plan, checkpoint),
    }


def crossval_info(parent: str | Path, checkpoint: str = "best") -> dict[str, Any]:
    """A JSON-ready description of a cross-validation parent folder (``medzoo train --folds K --fold all``).

    Returns:
        ``source``; ``data`` and ``plan`` of the first fold that has a plan (the folds share them);
        ``folds``: each fold's status (trained, interrupted, started, not started) and figures; ``crossval``:
        the out-of-fold Dice of ``crossval.json`` (per class over cases and over folds, without and with the
        post-processing, and the same as a table), or a note when it is not written yet; ``postprocessing``:
        the decision in ``postprocessing.json``; ``predict``: the folds ``predict`` would average and how.
    """
    from medzoo.engine.crossval import (
        CROSSVAL_FILE,
        describe_postprocessing,
        fold_dirs,
        fold_progress,
        load_crossval,
    )
    from medzoo.inference.postprocess import POSTPROCESSING_FILE

    parent = Path(parent)
    progress = fold_progress(parent)
    planned = [parent / f"fold_{k}" for k in progress if (parent / f"fold_{k}" / "plan.json").is_file()]
    plan = Plan.load(planned[0] / "plan.json") if planned else None
    config = read_json_object(planned[0] / "config.json") if planned else {}
    result = load_crossval(parent)
    if result is None:
        scores: dict[str, Any] = {"file": None, "note": f"no {CROSSVAL_FILE} yet: it is written when `medzoo "
                                  "train ... --fold all` finishes (run it again to finish the missing folds)"}
    else:
        summary = result.to_dict()["summary"]
        scores = {"file": str(parent / CROSSVAL_FILE), "folds": [f"fold_{k}" for k in result.folds],
                  "cases": len(result.cases),
                  "summary": summary, "table": result.table()}
    post = read_json_object(parent / POSTPROCESSING_FILE) or (result.postprocessing if result else {})
    members = fold_dirs(parent)
    predict = _predict(members[0], Plan.load(members[0] / "plan.json"), checkpoint) if members else {}
    chosen = bool(post.get("keep_largest_foreground") or post.get("keep_largest_classes"))
    predict = {"members": [p.name for p in members], "ensemble": "mean of the folds' probabilities",
               "postprocessing": "applied (--no-postprocess skips it)" if chosen else "none", **predict}
    data = {} if plan is None else _data(plan, config, planned[0], {})
    if data:  # a fold's split sizes; the cross-validation covers them all
        split = (data.pop("training_cases"), data.pop("validation_cases"))
        data["cases"] = None if None in split else sum(split)
    return {
        "source": {"path": str(parent), "kind": "cross-validation", "folds": len(progress)},
        "data": data,
        "plan": {} if plan is None else _plan(plan),
        "folds": {f"fold_{k}": figures for k, figures in progress.items()},
        "crossval": scores,
        "postprocessing": {"decision": describe_postprocessing(post) if post else None,
                           "file": str(parent / POSTPROCESSING_FILE) if (parent / POSTPROCESSING_FILE).is_file()
                           else None, **post},
        "predict": predict,
    }


def _data(plan: Plan, config: dict[str, Any], run_dir: Path, packed_sizes: dict[str, int]) -> dict[str, Any]:
    splits = read_json_object(run_dir / "splits.json")
    folds = splits.get("folds") or []
    fold = folds[int(splits.get("fold", 0) or 0)] if folds else {}
    sizes = {"training_cases": len(fold["train"]), "validation_cases": len(fold["val"])} if fold else packed_sizes
    return {
        "dataset": config.get("data"),
        "layout": config.get("layout") or "auto",
        "task": config.get("task", "segment"),
        "modalities": list(plan.modalities),
        "labels": {str(k): v for k, v in sorted(plan.labels.items())},
        "training_cases": sizes.get("training_cases"),
        "validation_cases": sizes.get("validation_cases"),
    }


def _plan(plan: Plan) -> dict[str, Any]:
    return {
        "network": plan.model,
        "model_kwargs": plan.model_kwargs,
        "spatial_dims": plan.spatial_dims,
        "in_channels": plan.in_channels,
        "num_classes": plan.num_classes,
        "patch_size": list(plan.patch_size),
        "batch_size": plan.batch_size,
        "target_spacing": None if plan.target_spacing is None else list(plan.target_spacing),
        "normalization": list(plan.normalization),
        "crop_to_nonzero": plan.crop_to_nonzero,
        **({"slice_axis": plan.slice_axis, "context_slices": plan.context_slices} if plan.spatial_dims == 2 else {}),
    }


def _training(run_dir: Path, config: dict[str, Any], plan: Plan, manifest: dict[str, Any]) -> dict[str, Any]:
    from medzoo.packaging import read_metrics_csv

    counters = dict(manifest.get("training") or {})
    if not counters:
        counters = _checkpoint_counters(run_dir)
    rows = [r for r in read_metrics_csv(run_dir / "metrics.csv") if r.get("val_dice_mean") is not None]
    best = max(rows, key=lambda r: r["val_dice_mean"]) if rows else None
    return {
        "epochs": counters.get("epoch"),
        "steps": counters.get("step"),
        "seconds": counters.get("elapsed"),
        "time_budget": config.get("time_budget"),
        "amp": config.get("amp"),
        "best_epoch": None if best is None else int(best["epoch"]),
        "best_dice": None if best is None else _dice(best),
        "final_dice": None if not rows else _dice(rows[-1]),
    }


def _dice(row: dict[str, float | None]) -> dict[str, float | None]:
    return {key[len("val_dice_"):]: value for key, value in row.items() if key.startswith("val_dice_")}


def _checkpoint_counters(run_dir: Path) -> dict[str, Any]:
    """Epoch, step and seconds of the run's latest checkpoint (empty when it has none)."""
    from medzoo.engine.checkpoint import load_checkpoint

    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        if (run_dir / name).is_file():
            ckpt = load_checkpoint(run_dir / name)
            return {k: ckpt[k] for k in ("epoch", "step", "elapsed") if k in ckpt}
    return {}


def _predict(run_dir: Path, plan: Plan, checkpoint: str) -> dict[str, Any]:
    """What ``medzoo predict`` with its defaults would use for this run on this machine."""
    from medzoo import runtime
    from medzoo.engine.checkpoint import checkpoint_path
    from medzoo.inference.backends import resolve_backend
    from medzoo.inference.predictor import inference_amp_dtype
    from medzoo.models.registry import prefers_channels_last

    device = runtime.resolve_device(None)
    ckpt = checkpoint_path(run_dir, checkpoint)
    dtype = inference_amp_dtype("auto", device, torch.nn.Identity())
    layout = runtime.preferred_memory_format("auto", plan.spatial_dims, device, prefers_channels_last(plan.model))
    backend = resolve_backend("auto", run_dir, device, amp="auto")
    if backend == "openvino":
        backend = "openvino (PyTorch if the network does not export or check)"
        dtype = None  # the export runs in fp32
    return {
        "checkpoint": ckpt.name if ckpt.is_file() else None,
        "device": str(device),
        "backend": backend,
        "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"),
        "memory_format": "channels_last" if layout is not None else "contiguous",
        "patch_size": list(plan.patch_size),
        "batch_size": 4,
    }
