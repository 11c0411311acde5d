"""Volume classification (``--task classify``): a CSV of image paths and class labels -> a classifier.

The CSV has one column per image modality (paths relative to the CSV), a ``label`` column (the class,
any value) and optionally ``case_id``. Every volume is z-scored per channel and resized to the plan's
``patch_size``; the network (``simple3dcnn`` by default) maps (B, C, *P) to (B, K) logits and is trained
with cross-entropy. Validation reports accuracy and ROC AUC (binary, or one-vs-rest macro average); the
best checkpoint is the one with the best accuracy. The run folder has the same files as segmentation.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.data.case import Case
from medzoo.engine import distributed
from medzoo.engine.callbacks import CallbackList, CSVLogger, EarlyStopping, ProgressBar, TensorBoardLogger
from medzoo.engine.checkpoint import build_model, load_checkpoint, save_checkpoint
from medzoo.engine.config import TrainConfig
from medzoo.engine.rng import capture_rng, restore_rng, seed_epoch, seed_everything, set_determinism
from medzoo.engine.schedules import create_schedule
from medzoo.engine.splits import load_splits, make_splits, save_splits
from medzoo.errors import DataError
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)

DEFAULT_CLASSIFIER = "simple3dcnn"
DEFAULT_SHAPE = (64, 64, 64)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (numpy only).

    Args:
        labels: (N,) integer classes 0..K-1.
        scores: (N,) positive-class scores for a binary task, or (N, K) class probabilities.

    Returns:
        Binary AUC via the rank-sum (Mann-Whitney) statistic with tied scores sharing their mean rank, or
        for K > 2 the one-vs-rest macro average over the classes with both positives and negatives.
        NaN when no class has both.
    """
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2:
        if scores.shape[1] == 2:
            return roc_auc(labels, scores[:, 1])
        aucs = [roc_auc((labels == k).astype(np.int64), scores[:, k]) for k in range(scores.shape[1])]
        aucs = [a for a in aucs if not np.isnan(a)]
        return float(np.mean(aucs)) if aucs else float("nan")
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank (1-based) within each group of equal scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class ClassificationTable:
    """The CSV's cases and their class indices."""

    cases: list[Case]
    targets: dict[str, int]
    class_values: list[str]
    modalities: list[str]


def read_classification_csv(path: str | Path, label_column: str = "label", id_column: str = "case_id") -> ClassificationTable:
    """Read a classification CSV (image path column(s), ``label``, optional ``case_id``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: classification CSV not found (--data must be the CSV file)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or label_column not in rows[0]:
        raise DataError(f"{path}: needs a header with image path column(s) and a '{label_column}' column")
    modalities = [c for c in rows[0] if c not in (label_column, id_column)]
    if not modalities:
        raise DataError(f"{path}: no image path column")
    raw = [r[label_column].strip() for r in rows]
    if any(not v for v in raw):
        raise DataError(f"{path}: line {raw.index('') + 2} has no label")
    values = sorted(set(raw), key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v))
    if len(values) < 2:
        raise DataError(f"{path}: all rows have the same label '{values[0]}'; need at least 2 classes")
    index = {v: i for i, v in enumerate(values)}
    cases, targets = [], {}
    for n, row in enumerate(rows, start=2):
        paths = [(path.parent / row[m]).resolve() for m in modalities]
        cid = (row.get(id_column) or "").strip() or f"{paths[0].name.split('.')[0]}"
        if cid in targets:
            raise DataError(f"{path}: line {n}: case id '{cid}' appears twice")
        cases.append(Case(cid, paths, None, {"target": index[row[label_column].strip()]}))
        targets[cid] = index[row[label_column].strip()]
    return ClassificationTable(cases, targets, values, modalities)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def prepare_volume(case: Case, shape: tuple[int, ...]) -> np.ndarray:
    """(C, *shape) float32: the case's image z-scored per channel and resized (trilinear)."""
    from medzoo.data.loading import load_image

    image = torch.from_numpy(load_image(case).array.astype(np.float32))
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    std = image.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-8)
    image = (image - mean) / std
    resized = nn.functional.interpolate(image[None], size=tuple(shape), mode="trilinear", align_corners=False)
    return resized[0].numpy()


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips per sample along each spatial axis (drawn from ``generator``)."""
    flips = torch.rand(batch.shape[0], batch.ndim - 2, generator=generator) < 0.5
    out = batch.clone()
    for b in range(batch.shape[0]):
        dims = [d + 1 for d in range(batch.ndim - 2) if flips[b, d]]
        if dims:
            out[b] = torch.flip(batch[b], dims)
    return out


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: np.ndarray, index: list[int], total: int,
              device: torch.device, batch_size: int) -> dict[str, float]:
    """Accuracy and AUC over the validation set (each rank scores ``index``; probabilities are summed)."""
    model.eval()
    k = int(model(x[:1].to(device)).shape[1])
    probs = torch.zeros(total, k, dtype=torch.float64)
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        out = torch.softmax(model(x[chunk].to(device)).float(), dim=1).cpu().double()
        probs[chunk] = out
    distributed.all_reduce_sum(probs)
    p = probs.numpy()
    model.train()
    return {"val_accuracy": float((p.argmax(1) == y).mean()), "val_auc": roc_auc(y, p if k > 2 else p[:, 1])}


def train_classifier(config: TrainConfig, *, resume: bool, device: torch.device,
                     dist_info: distributed.DistInfo, start: float):
    """The classification counterpart of the segmentation loop (same run folder, same checkpoints)."""
    from medzoo.engine.budget import Budget
    from medzoo.engine.trainer import TrainResult, _set_lr, _unwrap, build_optimizer, prepare_run_dir

    run_dir = prepare_run_dir(config, resume, dist_info.is_main)
    set_determinism(config.deterministic, device)
    table = read_classification_csv(config.data)
    if resume:
        plan = Plan.load(run_dir / "plan.json")
        splits = load_splits(run_dir / "splits.json")
    else:
        shape = tuple(config.patch_size) if config.patch_size else DEFAULT_SHAPE
        model_kwargs = dict(config.model_kwargs)
        plan = Plan(
            model=config.model or DEFAULT_CLASSIFIER, in_channels=len(table.modalities),
            num_classes=len(table.class_values), spatial_dims=3, model_kwargs=model_kwargs, patch_size=shape,
            batch_size=config.batch_size or 4, normalization=["zscore"] * len(table.modalities),
            labels=dict(enumerate(table.class_values)), modalities=table.modalities,
            extra={"task": "classify", "resize_to": list(shape)},
        )
        splits = make_splits([c.case_id for c in table.cases], folds=config.folds, seed=config.seed)
        if dist_info.is_main:
            plan.save(run_dir / "plan.json")
            save_splits(splits, run_dir / "splits.json", seed=config.seed, fold=config.fold)
    split = splits[config.fold if config.folds > 1 else 0]

    by_id = {c.case_id: c for c in table.cases}
    ids = split["train"] + split["val"]
    x = torch.from_numpy(np.stack([prepare_volume(by_id[i], plan.patch_size) for i in ids]))
    y = np.array([table.targets[i] for i in ids], dtype=np.int64)
    n_train = len(split["train"])
    train_idx = distributed.shard(list(range(n_train)), dist_info)
    val_global = list(range(n_train, len(ids)))
    val_local = [i for j, i in enumerate(val_global) if j % dist_info.world_size == dist_info.rank]
    x_val, y_val = x[n_train:], y[n_train:]
    val_local = [i - n_train for i in val_local]

    seed_everything(config.seed)
    model = build_model(plan).to(device)
    if not resume:
        from medzoo.engine.trainer import apply_transfer

        apply_transfer(model, config)
    optimizer = build_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    schedule = create_schedule(config.schedule, warmup_epochs=config.warmup_epochs, step_size=config.step_size,
                               gamma=config.gamma, plateau_patience=config.plateau_patience)
    stopper = EarlyStopping(config.patience)
    epoch0, step = 0, 0
    if resume:
        ckpt = load_checkpoint(run_dir / "checkpoint_last.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["scheduler"])
        stopper.load_state_dict(ckpt["early_stopping"])
        epoch0, step = int(ckpt["epoch"]), int(ckpt["step"])
        restore_rng(ckpt["rng"])
    train_model = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    callbacks = CallbackList([])
    if dist_info.is_main:
        callbacks = CallbackList([CSVLogger(run_dir / "metrics.csv", ["val_accuracy", "val_auc"]),
                                  TensorBoardLogger(run_dir / "tensorboard")])
        callbacks.callbacks.append(ProgressBar(config.max_epochs, config.budget_seconds, config.progress))
    callbacks.on_train_start(run_dir, epoch0)
    loss_fn = nn.CrossEntropyLoss()
    budget = Budget(config.budget_seconds, start)
    budget.val_estimate = 1.0
    stop_reason, last = "epochs", {}

    def state(epoch: int) -> dict[str, Any]:
        return {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": schedule.state_dict(), "early_stopping": stopper.state_dict(), "epoch": epoch,
                "step": step, "best_metric": stopper.best, "plan": plan.to_dict(), "model_name": plan.model,
                "config": config.to_dict(), "rng": capture_rng()}

    epoch = epoch0
    try:
        for epoch in range(epoch0, config.max_epochs):
            if budget.exhausted():
                stop_reason = "time_budget"
                break
            progress = budget.progress() if config.epochs is None else epoch / config.max_epochs
            lr = config.learning_rate * schedule.factor(epoch, progress)
            _set_lr(optimizer, lr)
            epoch_seed = seed_epoch(config.seed, epoch, dist_info.rank)
            rng = np.random.default_rng(epoch_seed)
            generator = torch.Generator().manual_seed(epoch_seed)
            order = np.concatenate([rng.permutation(train_idx) for _ in range(
                -(-config.iterations_per_epoch * plan.batch_size // max(len(train_idx), 1)))])
            callbacks.on_epoch_start(epoch, config.iterations_per_epoch)
            losses = []
            for it in range(config.iterations_per_epoch):
                t0 = time.monotonic()
                batch = order[it * plan.batch_size : (it + 1) * plan.batch_size]
                images = _augment(x[batch], generator).to(device)
                out = train_model(images)
                loss = loss_fn(out, torch.from_numpy(y[batch]).to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                budget.record_step(time.monotonic() - t0)
                callbacks.on_step_end(step, losses[-1])
            logs: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": lr}
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.max_epochs or budget.exhausted():
                t0 = time.monotonic()
                last = _evaluate(model, x_val, y_val, val_local, len(y_val), device, plan.batch_size * 2)
                budget.val_time = time.monotonic() - t0
                logs.update(last)
                schedule.observe(last["val_accuracy"])
                if stopper.update(last["val_accuracy"], epoch + 1) and dist_info.is_main:
                    save_checkpoint(run_dir / "checkpoint_best.pt", state(epoch + 1))
            logs["seconds"] = budget.elapsed()
            if dist_info.is_main:
                save_checkpoint(run_dir / "checkpoint_last.pt", state(epoch + 1))
            callbacks.on_epoch_end(epoch + 1, logs)
            epoch += 1
            if stopper.should_stop:
                stop_reason = "early_stopping"
                break
        if not last:
            last = _evaluate(model, x_val, y_val, val_local, len(y_val), device, plan.batch_size * 2)
        callbacks.on_train_end({"epoch": epoch, **last})
    finally:
        callbacks.close()
    if dist_info.is_main:
        from medzoo.engine.trainer import _plot_curves

        _plot_curves(run_dir)
    return TrainResult(run_dir, epoch, step, stopper.best, stopper.best_epoch, last, time.monotonic() - start,
                       stop_reason)
