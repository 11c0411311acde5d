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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.data.case import Case
from medzoo.engine import distributed
from medzoo.engine.budget import Budget
from medzoo.engine.splits import load_splits, make_splits, save_splits
from medzoo.engine.tasks import Task, Validation
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


class ClassificationTask(Task):
    """Whole volumes in, one logit per class out, cross-entropy; the best checkpoint has the best accuracy.

    The volumes are small and few, so they are read once, kept in memory, and every epoch draws shuffled
    batches with random flips. Training stays in fp32, contiguous and eager (``accelerated`` False).
    """

    accelerated = False
    metric_columns = ["val_accuracy", "val_auc"]

    def prepare(self, run_dir: Path, resume: bool, dist_info: distributed.DistInfo, device: torch.device) -> Plan:
        config, self.device, self.dist = self.config, device, dist_info
        table = read_classification_csv(config.data)
        if resume:
            plan = Plan.load(run_dir / "plan.json")
            splits = load_splits(run_dir / "splits.json")
        else:
            plan = self._new_plan(table)
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
        self.volumes, self.targets = x, y  # training cases first, then validation cases
        self.train_idx = distributed.shard(list(range(n_train)), dist_info)
        self.x_val, self.y_val = x[n_train:], y[n_train:]
        self.val_local = [j for j in range(len(ids) - n_train) if j % dist_info.world_size == dist_info.rank]
        self.plan = plan
        self.loss_fn = nn.CrossEntropyLoss()
        return plan

    def _new_plan(self, table: ClassificationTable) -> Plan:
        config = self.config
        shape = tuple(config.patch_size) if config.patch_size else DEFAULT_SHAPE
        return Plan(
            model=config.model or DEFAULT_CLASSIFIER, in_channels=len(table.modalities),
            num_classes=len(table.class_values), spatial_dims=3, model_kwargs=dict(config.model_kwargs),
            patch_size=shape, batch_size=config.batch_size or 4, normalization=["zscore"] * len(table.modalities),
            labels=dict(enumerate(table.class_values)), modalities=table.modalities,
            extra={"task": "classify", "resize_to": list(shape)},
        )

    def batches(self, seed: int, augment: str | None):
        """Shuffled passes over this rank's training volumes (as many as the epoch's steps need), flipped."""
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        size, steps = self.plan.batch_size, self.config.iterations_per_epoch
        passes = -(-steps * size // max(len(self.train_idx), 1))
        order = np.concatenate([rng.permutation(self.train_idx) for _ in range(passes)])
        for it in range(steps):
            batch = order[it * size : (it + 1) * size]
            yield _augment(self.volumes[batch], generator), torch.from_numpy(self.targets[batch])

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output.float(), target)

    def validate(self, model: nn.Module, mirror: bool, keep_example: bool) -> Validation:
        figures = _evaluate(model, self.x_val, self.y_val, self.val_local, len(self.y_val), self.device,
                            self.plan.batch_size * 2)
        return Validation(figures, figures["val_accuracy"])

    def calibrate(self, budget: Budget, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        budget.val_estimate = 1.0  # a pass over a few small volumes
        return False
