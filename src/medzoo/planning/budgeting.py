"""The budget rules of the planner: how many steps a run needs, how far its spacing may coarsen, 2D or 3D.

The planner (:func:`medzoo.planning.planner.make_plan`) starts from today's plan (native or median spacing,
the median case as patch, a fixed voxel count per batch) and, under a time budget, gives up resolution,
batch, width and context in that order of cost until the run gets :func:`required_steps` optimisation steps
in the time it has. The numbers and where they come from are in ``docs/planner.md``; each is restated in
the plan's reasons.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: share of the time budget the planner counts on for training steps; the rest goes to preprocessing, the
#: (at most 5 %) intermediate validations, the final validation and the trainer's safety margin
TRAIN_FRACTION = 0.8
#: optimisation steps a run should get: where hippocampus' held-out Dice came within 2.5 % of a run thirteen
#: times longer (docs/planner.md)
TARGET_STEPS = 1000
#: a budget-free plan expected to get at least this share of the steps needed is kept as it is: at half the
#: target (500 steps) hippocampus was within 6 % of its long-run Dice, less than trading resolution or context
#: is expected to cost; below it the plan is traded up to the full target
KEEP_FRACTION = 0.5
#: patches centred on each foreground class (the loader centres about a third of every batch, at least one
#: patch, on a random foreground class present): what each hippocampus class got in 500 steps, where its Dice
#: was within 6 % of the long run's (docs/planner.md)
PATCHES_PER_CLASS = 250
OVERSAMPLE_FOREGROUND = 0.33
#: a structure keeps at least this many voxels across at the target spacing (a 4-level U-Net sees it as one
#: voxel at its coarsest level)
MIN_DIAMETER_VOXELS = 8
#: no axis is coarsened beyond this many times the finest native spacing (nnU-Net's low-resolution
#: configuration stays within about 4x of full resolution on the MSD tasks)
MAX_COARSENING = 4.0
#: smallest patch edge the planner shrinks to for context (3D, voxels), unless the median case is smaller
MIN_PATCH_EDGE_3D = 32
MIN_PATCH_EDGE_2D = 64
#: strongly anisotropic: slice spacing at least this many times the in-plane spacing (nnU-Net's threshold)
ANISOTROPY_2D = 3.0
#: ... with fewer slices than this (a 3D patch would span few slices, pooled with in-plane kernels)
FEW_SLICES = 32
#: the planner times a step of the plan it chose; one this many times off its price (either way) plans again on
#: the corrected prices, at most this many rounds (a step's time is not linear in its voxels on a CPU)
PRICE_TOLERANCE = 1.2
PRICE_ROUNDS = 3
#: the narrower U-Net tried when the default one cannot take enough steps even at the smallest patch
NARROW_UNET_FEATURES = [8, 16, 32, 64]


def forced_per_batch(batch: int) -> int:
    """Patches of a batch the loader centres on foreground (as :class:`medzoo.data.loader.PatchLoader`)."""
    return max(1, int(round(batch * OVERSAMPLE_FOREGROUND)))


def required_steps(num_foreground: int, batch: int) -> tuple[int, str]:
    """Steps a run needs: :data:`TARGET_STEPS`, more when many classes share the foreground-centred patches."""
    per_class = math.ceil(PATCHES_PER_CLASS * max(num_foreground, 1) / forced_per_batch(batch))
    steps = max(TARGET_STEPS, per_class)
    why = (f"at least {TARGET_STEPS} optimisation steps (hippocampus: 97.5 % of its 13k-step Dice after 1000) "
           f"and {PATCHES_PER_CLASS} foreground-centred patches per class ({num_foreground} classes, "
           f"{forced_per_batch(batch)} forced per batch of {batch}): {steps} steps")
    return steps, why


def smallest_structure_mm(fingerprint: dict[str, Any] | None, shapes: np.ndarray, spacings: np.ndarray
                          ) -> tuple[float | None, str]:
    """Equivalent-sphere diameter (mm) of the smallest foreground class, averaged over the cases holding it;
    None when the fingerprint has no class frequencies."""
    fp = fingerprint or {}
    freq, presence = fp.get("class_frequencies"), fp.get("class_presence")
    if not freq or not presence or len(freq) != len(presence) or len(freq) < 2:
        return None, "structure sizes unknown (no class frequencies in the fingerprint)"
    voxels = float(np.sum(np.prod(shapes, axis=1)))
    voxel_mm3 = float(np.prod(np.median(spacings, axis=0)))
    diameters = {}
    for k in range(1, len(freq)):
        if presence[k] > 0 and freq[k] > 0:
            per_case = freq[k] * voxels / (presence[k] * len(shapes))
            diameters[k] = (6.0 * per_case * voxel_mm3 / math.pi) ** (1 / 3)
    if not diameters:
        return None, "no foreground class in the fingerprint"
    k = min(diameters, key=diameters.get)
    return diameters[k], f"smallest structure class {k}: about {diameters[k]:.1f} mm across"


def coarsen(base: np.ndarray, ratio: float, limit_mm: float) -> np.ndarray:
    """A spacing coarser than ``base`` by at most ``ratio`` in voxel count: the finest axes first (towards the
    coarsest one, as nnU-Net's low-resolution plan), no axis beyond ``limit_mm`` or :data:`MAX_COARSENING`
    times the finest native spacing (an axis already coarser stays as it is)."""
    base = np.asarray(base, float)
    cap = np.maximum(base, min(limit_mm, MAX_COARSENING * base.min()))
    t = base.copy()
    while np.prod(t / base) * 1.01 <= ratio:
        room = t * 1.01 <= cap + 1e-9
        fine = room & (t < t.max() * 0.999)
        grow = fine if fine.any() else room
        if not grow.any():
            break
        t[grow] *= 1.01
    return t


def choose_dims(median_spacing: np.ndarray, median_shape: np.ndarray) -> tuple[int, int, str]:
    """(spatial_dims, slice_axis, reason): 2D slices along the thick axis for strongly anisotropic data with
    few slices, else 3D."""
    axis = int(np.argmax(median_spacing))
    in_plane = min(s for a, s in enumerate(median_spacing) if a != axis)
    ratio = float(median_spacing[axis] / in_plane)
    slices = float(median_shape[axis])
    if ratio >= ANISOTROPY_2D and slices < FEW_SLICES:
        return 2, axis, (f"2D on slices along axis {axis}: slices are {ratio:.1f}x the in-plane spacing "
                         f"(>= {ANISOTROPY_2D:g}) and a case has {slices:.0f} of them (< {FEW_SLICES}), so a 3D "
                         "patch would pool thick slices with in-plane kernels; --spatial-dims 3 overrides")
    return 3, 2, (f"3D: slice/in-plane spacing ratio {ratio:.1f} and {slices:.0f} slices along the thickest axis "
                  f"(2D needs ratio >= {ANISOTROPY_2D:g} and < {FEW_SLICES} slices)")
