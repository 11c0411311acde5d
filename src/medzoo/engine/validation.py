"""Whole-case validation during training: sliding window over each preprocessed validation case, Dice
per class on the preprocessed grid (fast; the final evaluation on the original grid is ``medzoo evaluate``).

2D networks are validated slice by slice along ``plan.slice_axis`` (with ``plan.context_slices`` neighbours
as extra channels) and the slices are stacked back into a 3D label map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from medzoo.engine import distributed
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    """Mean Dice per class over the validation cases (NaN where no case had the class in prediction or
    reference), the mean over foreground classes, and one (image, prediction) pair for an overlay."""

    dice_per_class: np.ndarray
    mean_foreground_dice: float
    num_cases: int
    example: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


@torch.no_grad()
def predict_case(
    model: nn.Module, image: np.ndarray, plan: Plan, device: torch.device, overlap: float = 0.5,
    batch_size: int | None = None, mirror_axes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Label map (*S) of one preprocessed case image (C, *S) by sliding window (2D: slice by slice).

    ``batch_size`` windows per forward pass (default: twice the training batch in 3D, 8x in 2D);
    ``mirror_axes``: spatial axes of the network's input for mirroring test-time augmentation (None: off).
    """
    from medzoo.data.loader import slices_with_context
    from medzoo.inference.sliding_window import sliding_window_argmax

    x = torch.from_numpy(np.array(image, dtype=np.float32))  # a writable copy of the memmap
    if batch_size is None:
        batch_size = plan.batch_size * (2 if plan.spatial_dims == 3 else 8)
    if plan.spatial_dims == 3:
        labels, _ = sliding_window_argmax(
            x[None], model, plan.patch_size, overlap=overlap, batch_size=batch_size, device=device,
            mirror_axes=mirror_axes,
        )
        return labels[0].numpy()
    slices = slices_with_context(x, plan.slice_axis, plan.context_slices)  # (N, C', a, b), loader's order
    out = []
    chunk = max(1, batch_size)
    for start in range(0, slices.shape[0], chunk):
        labels, _ = sliding_window_argmax(
            slices[start : start + chunk], model, plan.patch_size, overlap=overlap, batch_size=batch_size,
            device=device, mirror_axes=mirror_axes,
        )
        out.append(labels)
    return torch.cat(out).movedim(0, plan.slice_axis).numpy()


def validate(
    model: nn.Module,
    cases: list,
    plan: Plan,
    device: torch.device,
    overlap: float = 0.5,
    keep_example: bool = False,
    mirror_axes: tuple[int, ...] | None = None,
) -> ValidationResult:
    """Dice per class over ``cases`` (objects with ``.image`` (C, *S) and ``.label`` (*S) arrays).

    ``mirror_axes`` turns on mirroring test-time augmentation over those spatial axes of the network's input
    (what ``medzoo predict --tta`` does).

    Under DDP each rank validates the cases it is given and the sums are all-reduced, so every rank gets the
    same result.
    """
    from medzoo.metrics import dice_per_class

    was_training = model.training
    model.eval()
    k = plan.num_classes
    sums = torch.zeros(k, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    example = None
    for case in cases:
        pred = predict_case(model, case.image, plan, device, overlap=overlap, mirror_axes=mirror_axes)
        dice = np.asarray(dice_per_class(pred, np.asarray(case.label), k, empty_value=np.nan), dtype=np.float64)
        ok = ~np.isnan(dice)
        sums[torch.from_numpy(ok)] += torch.from_numpy(dice[ok])
        counts[torch.from_numpy(ok)] += 1
        if keep_example and example is None:
            example = (np.asarray(case.image[0], dtype=np.float32), pred.astype(np.int64))
    distributed.all_reduce_sum(sums)
    distributed.all_reduce_sum(counts)
    per_class = (sums / counts.clamp(min=1)).numpy()
    per_class[counts.numpy() == 0] = np.nan
    fg = per_class[1:]
    mean_fg = float(np.nanmean(fg)) if np.any(~np.isnan(fg)) else 0.0
    model.train(was_training)
    return ValidationResult(per_class, mean_fg, len(cases), example)
