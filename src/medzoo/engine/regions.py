"""Region-based training (nnU-Net's regions, e.g. BraTS WT ⊃ TC ⊃ ET): the plan, the loss and the validation.

A dataset that declares regions (:attr:`medzoo.data.case.DatasetInfo.regions`, from the ``brats`` layout, an
nnU-Net v2 region ``dataset.json`` or the ``regions`` layout option) trains one sigmoid output per region:
:func:`region_plan` makes the plan's outputs the regions, :func:`training_loss` builds BCE + Dice on region
targets made from the label map on the fly (deep supervision wraps it as any loss), and
:func:`validate_regions` thresholds each region's probability at 0.5 and scores Dice per region. Unannotated
voxels (the ignore label) count in neither the loss nor the Dice.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.engine import distributed
from medzoo.engine.validation import ValidationResult
from medzoo.errors import DataError
from medzoo.planning.plan import Plan
from medzoo.utils import IGNORE_INDEX

log = logging.getLogger(__name__)

__all__ = ["region_plan", "training_loss", "validate_regions", "validation_logs"]

REGION_LOSS = "bce_dice"


def region_plan(plan: Plan, info: Any) -> Plan:
    """``plan`` with one output per region of ``info`` (and the order regions paint label values in)."""
    if not info.regions:
        return plan
    if not info.regions_class_order or len(info.regions_class_order) != len(info.regions):
        raise DataError(
            f"{info.root}: the dataset declares regions {list(info.regions)} but no regions_class_order (the label "
            "value each region paints in a prediction); add it to dataset.json or the layout options"
        )
    log.info("region-based training: %s (one sigmoid output each)", ", ".join(info.regions))
    return replace(plan, num_classes=len(info.regions), regions={k: list(v) for k, v in info.regions.items()},
                   regions_class_order=list(info.regions_class_order))  # fmt: skip


def training_loss(name: str, plan: Plan, ignore: bool) -> nn.Module:
    """The run's loss: ``name`` for class outputs, BCE + Dice on region targets for a region plan (a class
    loss named by the user is replaced, with a note), either with the ignore label masked out when ``ignore``."""
    from medzoo.losses import create_loss

    extra = {"ignore_index": IGNORE_INDEX} if ignore else {}
    if plan.regions is None:
        return create_loss(name, **extra)
    if name not in ("bce", "bce_dice"):
        log.info("loss '%s' replaced by '%s' for the region outputs", name, REGION_LOSS)
        name = REGION_LOSS
    return create_loss(name, regions=list(plan.regions.values()), **extra)


@torch.no_grad()
def _region_probabilities(
    model: nn.Module, image: np.ndarray, plan: Plan, device: torch.device, overlap: float,
    mirror_axes: tuple[int, ...] | None,
) -> torch.Tensor:
    """(R, *S) float16 sigmoid probabilities of one preprocessed case (2D plans slice by slice)."""
    from medzoo.data.loader import slices_with_context
    from medzoo.inference.sliding_window import sliding_window_argmax

    x = torch.from_numpy(np.array(image, dtype=np.float32))
    batch = plan.batch_size * (2 if plan.spatial_dims == 3 else 8)
    options = dict(overlap=overlap, batch_size=batch, device=device, mirror_axes=mirror_axes,
                   return_probabilities=True, activation="sigmoid")  # fmt: skip
    if plan.spatial_dims == 3:
        return sliding_window_argmax(x[None], model, plan.patch_size, **options)[1][0]
    slices = slices_with_context(x, plan.slice_axis, plan.context_slices)
    out = [sliding_window_argmax(slices[s : s + batch], model, plan.patch_size, **options)[1]
           for s in range(0, slices.shape[0], batch)]  # fmt: skip
    return torch.cat(out).movedim(0, plan.slice_axis + 1)  # (N, R, ...) -> (R, ...) with N at the slice axis


def validate_regions(
    model: nn.Module, cases: list, plan: Plan, device: torch.device, overlap: float = 0.5,
    keep_example: bool = False, mirror_axes: tuple[int, ...] | None = None,
) -> ValidationResult:
    """Dice per region over ``cases`` (preprocessed ``.image`` (C, *S), ``.label`` (*S) class indices).

    ``dice_per_class`` holds the regions in output order (no background entry); NaN for a region absent from
    every case's prediction and reference. Sums are all-reduced across ranks under DDP.
    """
    was_training = model.training
    model.eval()
    regions = list(plan.regions.values())
    sums = torch.zeros(len(regions), dtype=torch.float64)
    counts = torch.zeros(len(regions), dtype=torch.float64)
    example = None
    for case in cases:
        probs = _region_probabilities(model, case.image, plan, device, overlap, mirror_axes)
        label = np.asarray(case.label)
        annotated = label != IGNORE_INDEX
        for r, values in enumerate(regions):
            pred = (probs[r].float().numpy() > 0.5) & annotated
            ref = np.isin(label, values)
            denom = int(pred.sum()) + int(ref.sum())
            if denom:
                sums[r] += 2.0 * int((pred & ref).sum()) / denom
                counts[r] += 1
        if keep_example and example is None:
            example = (np.asarray(case.image[0], dtype=np.float32), (probs.float().numpy() > 0.5).sum(0))
    distributed.all_reduce_sum(sums)
    distributed.all_reduce_sum(counts)
    per_region = (sums / counts.clamp(min=1)).numpy()
    per_region[counts.numpy() == 0] = np.nan
    mean = float(np.nanmean(per_region)) if np.any(~np.isnan(per_region)) else 0.0
    model.train(was_training)
    return ValidationResult(per_region, mean, len(cases), example)


def validation_logs(result: ValidationResult, plan: Plan) -> dict[str, float]:
    """``val_dice_mean`` and ``val_dice_<region name>`` of a region validation."""
    figures = {"val_dice_mean": result.mean_foreground_dice}
    for r, name in enumerate(plan.regions):
        figures[f"val_dice_{name}"] = float(result.dice_per_class[r])
    return figures
