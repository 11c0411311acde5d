"""Segmentation metrics on integer label maps, per class and spacing-aware.

Metrics (names accepted by :func:`compute_case_metrics`):

- overlap: ``dice``, ``iou`` (Jaccard), ``precision`` (TP / (TP + FP)), ``recall`` (TP / (TP + FN)),
  ``vol_pred`` / ``vol_ref`` (volumes in mm^3, for reports);
- surface: ``hd95`` (95th-percentile symmetric Hausdorff distance, mm), ``hd`` (maximum), ``assd`` (average
  symmetric surface distance, mm), ``nsd`` (normalised surface Dice at ``tolerance_mm``).

Surface definition: the border of a binary mask is the set of mask voxels removed by one binary erosion with
the 6-connected (3D) / 4-connected (2D) cross, with everything outside the image counted as background
(``mask & ~erode(mask)``). Distances are Euclidean in mm between border-voxel centres, from
``scipy.ndimage.distance_transform_edt(~border, sampling=spacing)``, computed inside the bounding box of
pred | ref enlarged by one voxel (the nearest border voxel always lies in that box, so cropping changes
nothing but speed).

- ``hd95`` = max(q95(d(pred->ref)), q95(d(ref->pred))) with linear-interpolated percentiles;
- ``assd`` = mean of the concatenated distances of both directions (each border voxel counts once);
- ``nsd`` = (#pred border voxels within tolerance of ref border + #ref border voxels within tolerance of pred
  border) / (#pred border + #ref border).

These are exactly MONAI's definitions (``compute_hausdorff_distance(percentile=95)``,
``compute_average_surface_distance(symmetric=True)``, ``compute_surface_dice(use_subvoxels=False)``,
``compute_dice``/``compute_iou``), checked by the tests to 1e-6 (overlap) and 1e-3 mm (distances), except
for the empty-mask rule below where MONAI returns NaN/inf or warns.

Empty-mask rule (per class):

==============================  ======================================  =======================
case                            dice, iou, precision, recall, nsd        hd95, hd, assd
==============================  ======================================  =======================
ref and pred both empty         1.0 (perfect agreement)                   0.0
exactly one of them empty       0.0                                       ``inf``
==============================  ======================================  =======================

(``precision`` with an empty prediction but a non-empty reference is therefore 0, not 0/0.) MONAI returns NaN
when both are empty and ``inf`` when one is; medzoo's rule makes "nothing to find, nothing found" a perfect
score, so class averages are always defined. Aggregation code (:mod:`medzoo.evaluation`) reports how many
values are infinite instead of averaging them in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "ALL_METRICS",
    "DISTANCE_METRICS",
    "OVERLAP_METRICS",
    "compute_case_metrics",
    "dice_per_class",
    "surface_distances",
]

OVERLAP_METRICS = ("dice", "iou", "precision", "recall", "vol_pred", "vol_ref")
DISTANCE_METRICS = ("hd95", "hd", "assd", "nsd")
ALL_METRICS = OVERLAP_METRICS + DISTANCE_METRICS


def dice_per_class(pred, ref, num_classes: int, empty_value: float = 1.0) -> np.ndarray:
    """Dice of every class 0..num_classes-1 from one ``bincount`` of the joint labels (fast, for validation).

    Args:
        pred, ref: integer label maps of the same shape (numpy arrays or torch tensors, any shape; a batch is
            pooled into one set of counts). Reference voxels with a value >= num_classes (the ignore label,
            :data:`medzoo.utils.IGNORE_INDEX`) are not counted; ``pred`` must hold values in 0..num_classes-1.
        num_classes: K.
        empty_value: Dice of a class absent from both (1.0 by the module's rule; pass ``np.nan`` to skip
            such classes with ``np.nanmean``).

    Returns:
        float64 array (K,).
    """
    k = int(num_classes)
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and (isinstance(pred, torch.Tensor) or isinstance(ref, torch.Tensor)):
        p = torch.as_tensor(pred).reshape(-1).long()
        r = torch.as_tensor(ref).reshape(-1).long().to(p.device)
        conf = torch.bincount(r * k + p, minlength=k * k)[: k * k].reshape(k, k).cpu().numpy()
    else:
        p = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
        r = np.asarray(ref).reshape(-1).astype(np.int64, copy=False)
        if p.shape != r.shape:
            raise ValueError(f"pred and ref differ in size: {np.shape(pred)} vs {np.shape(ref)}")
        conf = np.bincount(r * k + p, minlength=k * k)[: k * k].reshape(k, k)
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1)  # (tp + fp) + (tp + fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), empty_value)
    return dice


def _border(mask: np.ndarray) -> np.ndarray:
    """Border voxels of a boolean mask: ``mask & ~erode(mask)``, outside the array counted as background."""
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of a boolean mask (+ margin, clipped to the array), or None when empty."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        slices.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(slices)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each pred border voxel to the ref border, and from each ref border voxel to pred's.

    Args:
        pred, ref: boolean masks (*S), both non-empty, already cropped if wanted.
        spacing: voxel size per axis (mm).

    Returns:
        (d_pred_to_ref (n_pred_border,), d_ref_to_pred (n_ref_border,)), float64.
    """
    bp, br = _border(pred), _border(ref)
    sampling = tuple(float(s) for s in spacing)
    d_to_ref = ndimage.distance_transform_edt(~br, sampling=sampling)
    d_to_pred = ndimage.distance_transform_edt(~bp, sampling=sampling)
    return d_to_ref[bp], d_to_pred[br]


def _overlap(p: np.ndarray, r: np.ndarray, voxel_volume: float) -> dict[str, float]:
    tp = float(np.count_nonzero(p & r))
    np_, nr = float(np.count_nonzero(p)), float(np.count_nonzero(r))
    fp, fn = np_ - tp, nr - tp
    both_empty = np_ == 0 and nr == 0

    def ratio(num: float, den: float) -> float:
        if both_empty:
            return 1.0
        return num / den if den > 0 else 0.0

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "vol_pred": np_ * voxel_volume,
        "vol_ref": nr * voxel_volume,
    }


def _distances(
    p: np.ndarray, r: np.ndarray, spacing: Sequence[float], wanted: Iterable[str], tolerance_mm: float
) -> dict[str, float]:
    wanted = list(wanted)
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        perfect = {"hd95": 0.0, "hd": 0.0, "assd": 0.0, "nsd": 1.0}
        return {m: perfect[m] for m in wanted}
    if not (has_p and has_r):
        worst = {"hd95": math.inf, "hd": math.inf, "assd": math.inf, "nsd": 0.0}
        return {m: worst[m] for m in wanted}
    box = _bbox(p | r, margin=1)  # (cheap when compute_case_metrics already cropped)
    d_pr, d_rp = surface_distances(p[box], r[box], spacing)
    out: dict[str, float] = {}
    for m in wanted:
        if m == "hd95":
            out[m] = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
        elif m == "hd":
            out[m] = float(max(d_pr.max(), d_rp.max()))
        elif m == "assd":
            out[m] = float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))
        elif m == "nsd":
            ok = np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm)
            out[m] = float(ok / (d_pr.size + d_rp.size))
    return out


def compute_case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Iterable[int] | Mapping[int, str],
    spacing: Sequence[float] | None = None,
    metrics: Sequence[str] = ("dice", "hd95"),
    tolerance_mm: float = 1.0,
) -> dict[int, dict[str, float]]:
    """Per-class metrics of one case.

    Args:
        pred, ref: integer label maps of the same shape (*S) (2D or 3D; a leading channel axis of size 1 is
            dropped).
        labels: label values to score (e.g. ``[1, 2]``), or a mapping whose keys are the label values.
        spacing: voxel size per spatial axis in mm (default 1 mm).
        metrics: names from :data:`ALL_METRICS`.
        tolerance_mm: tolerance of the normalised surface Dice ``nsd``.

    Returns:
        ``{label: {metric: value}}``; the empty-mask rule is in the module docstring.

    Raises:
        ValueError: shapes differ, wrong spacing length or unknown metric name.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    n_spatial = len(spacing) if spacing is not None else (3 if pred.ndim == 4 else pred.ndim)
    if pred.ndim == n_spatial + 1 and pred.shape[0] == 1:  # drop a channel axis (1, *S)
        pred = pred[0]
    if ref.ndim == n_spatial + 1 and ref.shape[0] == 1:
        ref = ref[0]
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * pred.ndim))
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {pred.ndim}-D label map")
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(ALL_METRICS)}")
    overlap_wanted = [m for m in metrics if m in OVERLAP_METRICS]
    distance_wanted = [m for m in metrics if m in DISTANCE_METRICS]
    voxel_volume = float(np.prod(spacing))
    label_values = [int(v) for v in (labels.keys() if isinstance(labels, Mapping) else labels)]

    # Per-label bounding boxes from one pass each (find_objects), so each class only touches its own box.
    max_label = int(max(label_values + [0]))
    boxes_p = _label_boxes(pred, max_label)
    boxes_r = _label_boxes(ref, max_label)
    full = tuple(slice(0, n) for n in pred.shape)

    result: dict[int, dict[str, float]] = {}
    for lab in label_values:
        if lab <= 0 or boxes_p is None or boxes_r is None:
            box: tuple[slice, ...] | None = full
        else:
            box = _union_box(boxes_p.get(lab), boxes_r.get(lab), pred.shape)
        if box is None:
            p = r = np.zeros((1,) * pred.ndim, dtype=bool)
        else:
            p, r = pred[box] == lab, ref[box] == lab
        values = _overlap(p, r, voxel_volume)
        out = {m: values[m] for m in overlap_wanted}
        if distance_wanted:
            out.update(_distances(p, r, spacing, distance_wanted, tolerance_mm))
        result[lab] = {m: out[m] for m in metrics}
    return result


def _label_boxes(labels: np.ndarray, max_label: int) -> dict[int, tuple[slice, ...]] | None:
    """Bounding box of every label 1..max_label present, from one ``find_objects`` pass.

    Returns None when boxes cannot be used (negative or non-integer values): then every label uses the whole
    array. Label 0 (background) always uses the whole array.
    """
    if max_label <= 0:
        return {}
    if not np.issubdtype(labels.dtype, np.integer) or (labels.dtype.kind == "i" and labels.min() < 0):
        return None
    found = ndimage.find_objects(labels, max_label)
    return {i: sl for i, sl in enumerate(found, start=1) if sl is not None}


def _union_box(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: tuple[int, ...], margin: int = 1
) -> tuple[slice, ...] | None:
    if a is None and b is None:
        return None
    boxes = [x for x in (a, b) if x is not None]
    return tuple(
        slice(max(min(bx[d].start for bx in boxes) - margin, 0), min(max(bx[d].stop for bx in boxes) + margin, n))
        for d, n in enumerate(shape)
    )
