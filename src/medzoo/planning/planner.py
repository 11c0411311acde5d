"""The planner: from a dataset (and its fingerprint) to a :class:`~medzoo.planning.plan.Plan`.

Rules, in the spirit of nnU-Net but small enough to read:

- network: ``unet3d`` unless overridden; 2D networks (cards supporting only 2D) train on slices.
- target spacing: None (keep native) when the cases' spacings agree within 10 % per axis, else the median.
- patch: the median (resampled) case shape rounded *down* to the model's size rule (never below its
  minimum), capped per axis and in volume; 2D networks take the two in-plane axes. Rounding down keeps
  zero padding out of the patches: on small cases a rounded-up patch spends much of every step on padding
  (measured on hippocampus, see docs/benchmarks.md).
- batch: as many patches as fit a fixed voxel budget, 2..8 in 3D, 2..32 in 2D.
- normalisation per channel: "ct" (global clip + z-score from the fingerprint's foreground statistics) for
  channels named CT, per-image z-score otherwise.
- mirroring (training flips, test-time augmentation): every axis, except the left-right one when two label
  names differ only by a side word (``kidney_left``/``kidney_right``): a mirror image shows the left organ
  where the right one belongs, so flipped patches would teach the network that the two are the same class.

Under a time budget (``make_plan(..., time_budget=seconds)``, what ``medzoo train --time-budget`` asks) the
plan above is priced on this machine (:mod:`medzoo.planning.device`) and, when it would not get the steps
the run needs, trades batch, width, resolution and context in that order (:mod:`medzoo.planning.budgeting`,
``docs/planner.md``); strongly anisotropic data with few slices trains 2D. ``plan.extra["reasons"]`` says why
each choice was made.

Every choice can be overridden by keyword (``patch_size=(32, 48, 32)``, ``model="unet2d"``, ...); a setting
given is never traded.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from medzoo.data.case import DatasetInfo
from medzoo.errors import ConfigError
from medzoo.planning.budgeting import (
    KEEP_FRACTION,
    MAX_COARSENING,
    MIN_DIAMETER_VOXELS,
    MIN_PATCH_EDGE_2D,
    MIN_PATCH_EDGE_3D,
    NARROW_UNET_FEATURES,
    PRICE_ROUNDS,
    PRICE_TOLERANCE,
    TRAIN_FRACTION,
    choose_dims,
    coarsen,
    required_steps,
    smallest_structure_mm,
)
from medzoo.planning.fingerprint import left_right_axis
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)

DEFAULT_MODEL = "unet3d"
# A small, fast 3D U-Net that trains to a visible result on a CPU in minutes. Deep supervision (a 1x1 head on
# each coarser decoder level, halving loss weights, as nnU-Net) costs no measurable time per step and learned
# faster on hippocampus at a fixed number of steps (docs/benchmarks.md, "Real data").
DEFAULT_MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "unet3d": {"features": [16, 32, 64, 128], "deep_supervision": True},
}
MAX_PATCH_3D = (128, 128, 128)
MAX_PATCH_VOXELS_3D = 128**3
MAX_PATCH_2D = (512, 512)
BATCH_VOXELS_3D = 4 * 32 * 48 * 32  # about 0.2 M voxels per step: about a second per step on 2 CPU cores
BATCH_PIXELS_2D = 12 * 256 * 256
_PLAN_FIELDS = {
    "model", "in_channels", "num_classes", "spatial_dims", "model_kwargs", "patch_size", "batch_size",
    "target_spacing", "crop_to_nonzero", "normalization", "norm_stats", "labels", "modalities",
    "label_mapping", "slice_axis", "context_slices", "extra", "mirror_axes",
}
#: words that name a side in label names, and the other side
_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l", "lt": "rt", "rt": "lt"}


def _fingerprint_geometry(fingerprint: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(shapes (N, 3), spacings (N, 3)) of the cases described by a fingerprint."""
    cases = fingerprint.get("cases")
    if isinstance(cases, dict):
        cases = list(cases.values())
    if cases:
        shapes = [c.get("shape") or c.get("spatial_shape") for c in cases]
        spacings = [c.get("spacing") for c in cases]
        if all(s is not None for s in shapes) and all(s is not None for s in spacings):
            return np.array([s[-3:] for s in shapes], float), np.array(spacings, float)
    shapes = fingerprint.get("shapes")
    spacings = fingerprint.get("spacings")
    if shapes is not None and spacings is not None:
        return np.array([s[-3:] for s in shapes], float), np.array(spacings, float)
    median_shape = fingerprint.get("median_shape")
    median_spacing = fingerprint.get("median_spacing")
    if median_shape is not None and median_spacing is not None:
        return np.array([median_shape[-3:]], float), np.array([median_spacing], float)
    raise ConfigError("the fingerprint has no case shapes/spacings; recompute it with `medzoo fingerprint`")


def _read_geometry(info: DatasetInfo, max_cases: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Shapes and spacings read from the label files (or first images) when no fingerprint is given."""
    from medzoo.data.loading import read_volume_any

    shapes, spacings = [], []
    for case in info.cases[:max_cases]:
        path = case.label_path or case.image_paths[0]
        vol = read_volume_any(path)
        shapes.append(vol.array.shape[-3:])
        spacings.append(vol.spacing)
    if not shapes:
        raise ConfigError(f"{info.root}: dataset has no cases to plan from")
    return np.array(shapes, float), np.array(spacings, float)


def _target_spacing(spacings: np.ndarray) -> tuple[float, ...] | None:
    lo, hi = spacings.min(axis=0), spacings.max(axis=0)
    if np.all(hi <= lo * 1.1):
        return None
    return tuple(float(s) for s in np.median(spacings, axis=0))


def _size_rule(model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int,
               num_classes: int) -> tuple[int, int]:
    """(size_divisor, min_size) of the network actually built with these arguments."""
    from medzoo.models.registry import create_model, get_card

    card = get_card(model)
    divisor, min_size = card.size_divisor, card.min_size
    try:  # the rule can depend on the arguments (e.g. U-Net depth), so ask the built network
        net = create_model(model, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                           **model_kwargs)
        divisor = int(getattr(net, "size_divisor", divisor))
        min_size = max(min_size, divisor)
    except Exception as err:  # noqa: BLE001 - building is only a refinement; the card's rule stands
        log.debug("planner could not build %s to refine its size rule: %s", model, err)
    return max(divisor, 1), max(min_size, 1)


def _fit(size: float, divisor: int, min_size: int, cap: int, round_up: bool = False) -> int:
    """``size`` as a multiple of ``divisor`` (rounded down, or up), at least ``min_size``, at most ``cap``."""
    size = int(math.ceil(size / divisor) * divisor) if round_up else int(math.floor(size / divisor) * divisor)
    size = max(size, int(math.ceil(min_size / divisor) * divisor), divisor)
    cap = max(int(cap // divisor) * divisor, divisor)
    return min(size, cap)


def _normalization(modalities: list[str]) -> list[str]:
    return ["ct" if re.search(r"(^|[^a-z])ct([^a-z]|$)", m.lower()) else "zscore" for m in modalities]


def make_plan(info: DatasetInfo, fingerprint: dict[str, Any] | None = None, *, time_budget: float | None = None,
              device_profile: Any = None, **overrides: Any) -> Plan:
    """Choose network, spacing, patch, batch and normalisation for a dataset.

    Args:
        info: the dataset (from :func:`medzoo.data.layouts.load_dataset`).
        fingerprint: the dataset fingerprint (:func:`medzoo.planning.fingerprint.compute_fingerprint`);
            None reads the geometry of up to 50 cases directly.
        time_budget: seconds the run may take; the plan then fits the budget (see the module
            :mod:`medzoo.planning.budgeting`); None keeps the budget-free plan.
        device_profile: the :class:`~medzoo.planning.device.DeviceProfile` that prices a step (None: this
            machine's, measured once and cached).
        **overrides: any :class:`Plan` field (``model``, ``model_kwargs``, ``patch_size``, ``batch_size``,
            ``spatial_dims``, ``context_slices``, ``target_spacing``, ...). ``model_kwargs`` is merged into the
            defaults of the model. A setting given here is never changed by the budget.

    Returns:
        The plan; ``plan.extra["reasons"]`` says why each choice was made.
    """
    from medzoo.models.registry import get_card

    unknown = set(overrides) - _PLAN_FIELDS
    if unknown:
        raise ConfigError(f"unknown plan settings {sorted(unknown)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fixed = set(overrides)
    if fingerprint is None:
        shapes, spacings = _read_geometry(info)
    else:
        shapes, spacings = _fingerprint_geometry(fingerprint)
    crop = overrides.pop("crop_to_nonzero", None)
    cropped = (fingerprint or {}).get("shapes_after_crop")
    if crop is None:  # nnU-Net's rule: crop when it shrinks the median case by at least a quarter
        crop = bool(cropped) and np.prod(np.median(np.asarray(cropped, float), axis=0)) < 0.75 * np.prod(
            np.median(shapes, axis=0))
    full_shapes = shapes
    if crop and cropped:
        shapes = np.asarray([s[-3:] for s in cropped], float)
    target = overrides.pop("target_spacing", _target_spacing(spacings))
    reasons = {"spacing": "given" if "target_spacing" in fixed else (
        "native: the cases' spacings agree within 10 % per axis" if target is None
        else "the median spacing: the cases' spacings differ by more than 10 % on some axis")}

    model = overrides.pop("model", None)
    spatial_dims = overrides.pop("spatial_dims", None)
    slice_axis = overrides.pop("slice_axis", None)
    if time_budget is not None and model is None and spatial_dims is None:
        base = np.median(spacings, axis=0) if target is None else np.asarray(target, float)
        spatial_dims, axis, reasons["dims"] = choose_dims(base, np.median(shapes * spacings / base, axis=0))
        slice_axis = axis if slice_axis is None else slice_axis
    if model is None:
        model = "unet2d" if spatial_dims == 2 else DEFAULT_MODEL
        reasons["network"] = f"{model}: the default {spatial_dims or 3}D network"
    else:
        reasons["network"] = "given"
    card = get_card(model)
    spatial_dims = int(spatial_dims or (3 if 3 in card.spatial_dims else card.spatial_dims[0]))
    if spatial_dims not in card.spatial_dims:
        raise ConfigError(f"model '{model}' supports spatial_dims {card.spatial_dims}, not {spatial_dims}")
    reasons.setdefault("dims", f"{spatial_dims}D: {'given' if 'spatial_dims' in fixed else 'the network'}")
    model_kwargs = {**DEFAULT_MODEL_KWARGS.get(model, {}), **overrides.pop("model_kwargs", {})}
    slice_axis = int(2 if slice_axis is None else slice_axis)
    context = int(overrides.pop("context_slices", 0)) if spatial_dims == 2 else 0
    in_channels = info.num_channels * (2 * context + 1)

    net = _Net(model, spatial_dims, model_kwargs, in_channels, info.num_classes, slice_axis)
    patch, batch = _patch_and_batch(net, shapes, spacings, target)
    reasons["patch"] = ("the median case rounded down to the network's size rule, capped at "
                        f"{'x'.join(map(str, MAX_PATCH_3D if spatial_dims == 3 else MAX_PATCH_2D))}")
    reasons["batch"] = "as many patches as fit a fixed voxel count per step"
    if time_budget is not None:
        target, net, patch, batch, step_price = _fit_budget(
            float(time_budget), device_profile, fingerprint, full_shapes, shapes, spacings, target, net, patch,
            batch, fixed, reasons)
    patch_size = tuple(int(p) for p in overrides.pop("patch_size", patch))
    _check_patch(net, patch_size)
    if "patch_size" in fixed:
        reasons["patch"] = "given"
    if "batch_size" in fixed:
        reasons["batch"] = "given"

    extra = {
        "planner": "medzoo.planning.planner v1" if time_budget is None else "medzoo.planning.planner v2 (budget)",
        "median_shape": [float(s) for s in np.median(full_shapes, axis=0)],
        "median_spacing": [float(s) for s in np.median(spacings, axis=0)],
        "size_divisor": net.divisor,
        "reasons": reasons,
        **({"step_price": step_price} if time_budget is not None and step_price else {}),
        **overrides.pop("extra", {}),
    }
    norm_stats = overrides.pop("norm_stats", _norm_stats(fingerprint, info.num_channels))
    labels = dict(overrides.pop("labels", info.labels))
    if "mirror_axes" in fixed:
        mirror_axes, reasons["mirroring"] = tuple(overrides.pop("mirror_axes")), "given"
    else:
        mirror_axes, reasons["mirroring"] = choose_mirror_axes(
            labels, lambda: _left_right_axes(info, fingerprint), spatial_dims, slice_axis)
    plan = Plan(
        model=net.model,
        in_channels=in_channels,
        num_classes=info.num_classes,
        spatial_dims=spatial_dims,
        model_kwargs=net.kwargs,
        patch_size=patch_size,
        batch_size=int(overrides.pop("batch_size", batch)),
        target_spacing=None if target is None else tuple(float(t) for t in target),
        crop_to_nonzero=bool(crop),
        normalization=list(overrides.pop("normalization", _normalization(info.modalities))),
        norm_stats=norm_stats,
        labels=labels,
        modalities=list(overrides.pop("modalities", info.modalities)),
        label_mapping=overrides.pop("label_mapping", info.label_mapping),
        slice_axis=slice_axis,
        context_slices=context,
        extra=extra,
        mirror_axes=mirror_axes,
    )
    if overrides:  # pragma: no cover - every field is consumed above
        raise ConfigError(f"unused plan settings {sorted(overrides)}")
    return plan


def side_pairs(names: Any) -> list[tuple[str, str]]:
    """Pairs of label names that differ only by a side word: ``kidney_left``/``kidney_right``,
    ``Left-Putamen``/``Right-Putamen``, ``Kidney_L``/``Kidney_R``, ``right adrenal``/``left adrenal``."""
    by_key: dict[tuple[str, ...], dict[str, str]] = {}
    for name in names:
        words = re.findall(r"[a-z]+|[0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", str(name)).lower())
        for i, word in enumerate(words):
            if word in _SIDES:
                key = (*words[:i], "<side>", *words[i + 1:])
                by_key.setdefault(key, {})[word] = str(name)
    pairs = []
    for sides in by_key.values():
        for word, name in sides.items():
            other = sides.get(_SIDES[word])
            if other is not None and (other, name) not in pairs:
                pairs.append((name, other))
    return pairs


def choose_mirror_axes(labels: dict[int, str], left_right_axes: Any, spatial_dims: int, slice_axis: int
                       ) -> tuple[tuple[int, ...] | None, str]:
    """The axes of the network's input that may be mirrored, and why.

    Args:
        labels: class index -> name.
        left_right_axes: a callable returning the volume axes (0-2) that run left-right in the cases (called
            only when a pair of side names is found).
        spatial_dims: 3, or 2 for a network on slices along ``slice_axis``.
    """
    pairs = side_pairs(name for index, name in sorted(labels.items()) if index != 0)
    if not pairs:
        return None, "every axis: no two labels are a left/right pair"
    volume_axes = list(range(3)) if spatial_dims == 3 else [a for a in range(3) if a != slice_axis]
    lateral = set(left_right_axes())
    keep = tuple(i for i, a in enumerate(volume_axes) if a not in lateral)
    if len(keep) == len(volume_axes):
        return None, f"every axis: the slices run along the left-right axis, so no flip swaps {pairs[0][0]} and {pairs[0][1]}"
    named = ", ".join(f"{a}/{b}" for a, b in pairs[:3]) + (" ..." if len(pairs) > 3 else "")
    return keep, (f"not along the left-right axis (volume axis {', '.join(map(str, sorted(lateral)))}): a mirror "
                  f"image would swap {named}; every other axis")


def _left_right_axes(info: DatasetInfo, fingerprint: dict[str, Any] | None) -> list[int]:
    """The volume axes that run left-right in the cases: from the fingerprint, else from the first cases' files."""
    axes = (fingerprint or {}).get("left_right_axes")
    if not axes:
        from medzoo.data.loading import read_volume_any

        axes = [left_right_axis(read_volume_any(c.label_path or c.image_paths[0]).affine) for c in info.cases[:3]]
    return sorted({int(a) for a in axes})


@dataclass
class _Net:
    """A candidate network and the size rule of the network built with these arguments."""

    model: str
    spatial_dims: int
    kwargs: dict[str, Any]
    in_channels: int
    num_classes: int
    slice_axis: int
    divisor: int = 1
    min_size: int = 1

    def __post_init__(self) -> None:
        self.divisor, self.min_size = _size_rule(self.model, self.spatial_dims, self.kwargs, self.in_channels,
                                                 self.num_classes)

    def cost(self, profile: Any):
        return profile.cost(self.model, self.spatial_dims, self.kwargs, self.in_channels, self.num_classes)


def _median_shape(shapes: np.ndarray, spacings: np.ndarray, target: Any) -> np.ndarray:
    if target is None:
        return np.median(shapes, axis=0)
    return np.median(shapes * spacings / np.asarray(target, float), axis=0)


def _patch_and_batch(net: _Net, shapes: np.ndarray, spacings: np.ndarray, target: Any
                     ) -> tuple[list[int], int]:
    """The budget-free patch (the median case rounded down, capped) and batch (a fixed voxel count)."""
    median_shape = _median_shape(shapes, spacings, target)
    divisor, min_size = net.divisor, net.min_size
    if net.spatial_dims == 3:
        patch = [_fit(s, divisor, min_size, c) for s, c in zip(median_shape, MAX_PATCH_3D)]
        while math.prod(patch) > MAX_PATCH_VOXELS_3D:  # shrink the largest axis until the volume fits
            i = int(np.argmax(patch))
            patch[i] = max(patch[i] - divisor, min_size)
        return patch, int(np.clip(BATCH_VOXELS_3D // math.prod(patch), 2, 8))
    in_plane = [s for a, s in enumerate(median_shape) if a != net.slice_axis]
    patch = [_fit(s, divisor, min_size, c) for s, c in zip(in_plane, MAX_PATCH_2D)]
    return patch, int(np.clip(BATCH_PIXELS_2D // math.prod(patch), 2, 32))


def _check_patch(net: _Net, patch_size: tuple[int, ...]) -> None:
    if len(patch_size) != net.spatial_dims:
        raise ConfigError(f"patch_size {patch_size} needs {net.spatial_dims} entries for a {net.spatial_dims}D "
                          "network")
    bad = [p for p in patch_size if p < net.min_size or p % net.divisor]
    if bad:
        valid = tuple(_fit(p, net.divisor, net.min_size, 10**6, round_up=True) for p in patch_size)
        raise ConfigError(
            f"patch_size {patch_size} does not fit model '{net.model}' (multiple of {net.divisor}, >= "
            f"{net.min_size}); nearest valid is {valid}"
        )


def _fit_budget(seconds: float, profile: Any, fingerprint: dict[str, Any] | None, full_shapes: np.ndarray,
                shapes: np.ndarray, spacings: np.ndarray, target: Any, net: _Net, patch: list[int], batch: int,
                fixed: set[str], reasons: dict[str, str]) -> tuple[Any, _Net, list[int], int, dict | None]:
    """The budget plan (:func:`_trade_for_budget`), checked against a timed step of itself.

    The probe prices every candidate; the chosen plan's step is then timed and added to the network's price
    curve, and a step more than :data:`PRICE_TOLERANCE` times off its price plans again on the corrected curve
    (at most :data:`PRICE_ROUNDS` times). Returns what :func:`_trade_for_budget` returns, the price being the
    timed step.
    """
    width_free = not {"model", "model_kwargs"} & fixed and net.model == "unet3d"
    if {"patch_size", "batch_size"} <= fixed and not width_free:
        reasons["budget"] = "patch, batch and network given: nothing for the budget to choose"
        return target, net, patch, batch, None
    if profile is None:
        from medzoo.planning.device import device_profile

        profile = device_profile()
    first_price = None
    for _ in range(PRICE_ROUNDS):
        trial = dict(reasons)
        choice = _trade_for_budget(seconds, profile, fingerprint, full_shapes, shapes, spacings, target, net, patch,
                                   batch, fixed, trial)
        _, chosen, chosen_patch, chosen_batch, price = choice
        first_price = first_price or price["step_seconds"]
        timed = profile.confirm(chosen.model, chosen.spatial_dims, chosen.kwargs, chosen.in_channels,
                                chosen.num_classes, chosen_batch, tuple(chosen_patch))
        if 1 / PRICE_TOLERANCE <= timed / price["step_seconds"] <= PRICE_TOLERANCE:
            break
    first = f", first priced at {first_price:.2f} s" if abs(first_price - timed) > 0.005 else ""
    trial["budget"] += (f"; a step of this plan timed {timed:.2f} s{first}: about "
                        f"{TRAIN_FRACTION * seconds / timed:.0f} steps")
    reasons.clear()
    reasons.update(trial)
    return (*choice[:4], {**price, "step_seconds": float(timed)})


def _trade_for_budget(seconds: float, profile: Any, fingerprint: dict[str, Any] | None, full_shapes: np.ndarray,
                      shapes: np.ndarray, spacings: np.ndarray, target: Any, net: _Net, patch: list[int], batch: int,
                      fixed: set[str], reasons: dict[str, str]) -> tuple[Any, _Net, list[int], int, dict]:
    """Give up batch, width, resolution and context, in that order, until the run gets the steps it needs.

    Settings in ``fixed`` (given by the user) are never changed. Writes the reason of every choice into
    ``reasons``; returns (target spacing, network, patch, batch, step price), the step price being the
    probed network's key and the seconds it expects a step of the plan to take; the trainer compares it with
    the steps it measures (:func:`medzoo.planning.device.correct_step_price`).
    """
    width_free = not {"model", "model_kwargs"} & fixed and net.model == "unet3d"
    train_seconds = TRAIN_FRACTION * seconds
    n_fg = max(net.num_classes - 1, 1)

    def steps(n: _Net, p: list[int], b: int) -> float:
        return train_seconds / n.cost(profile).seconds(b, tuple(p))

    need, why_need = required_steps(n_fg, batch)
    got = steps(net, patch, batch)
    budget_words = f"{TRAIN_FRACTION:.0%} of {seconds:.0f} s for steps"
    if got >= KEEP_FRACTION * need:
        enough = "enough" if got >= need else f"at least {KEEP_FRACTION:.0%} of them, close enough to keep"
        reasons["budget"] = (f"{budget_words}: about {got:.0f} steps of the budget-free plan, {enough} ({why_need}); "
                             "nothing traded")
        return target, net, patch, batch, _price(net, profile, patch, batch)
    if "batch_size" not in fixed and batch > 2:
        batch = 2
        reasons["batch"] = "2 (nnU-Net's minimum): the budget-free batch leaves too few steps"
        need, why_need = required_steps(n_fg, batch)
    if steps(net, patch, batch) < need and width_free:
        narrow = _Net(net.model, net.spatial_dims, {**net.kwargs, "features": list(NARROW_UNET_FEATURES)},
                      net.in_channels, net.num_classes, net.slice_axis)
        if steps(narrow, patch, batch) > steps(net, patch, batch):
            net = narrow
            reasons["network"] = (f"unet3d with features {NARROW_UNET_FEATURES}: the default width leaves too few "
                                  "steps (half the width learned as well per step on hippocampus)")
    max_voxels = net.cost(profile).max_voxels(batch, train_seconds / need)
    base = np.median(spacings, axis=0) if target is None else np.asarray(target, float)
    if "patch_size" not in fixed and "target_spacing" not in fixed and math.prod(patch) > max_voxels:
        limit_mm, why_limit = smallest_structure_mm(fingerprint, full_shapes, spacings)
        if limit_mm is None:
            reasons["spacing"] += f"; not coarsened: {why_limit}"
        else:
            ratio = math.prod(patch) / max_voxels
            coarse = coarsen(base, ratio, limit_mm / MIN_DIAMETER_VOXELS)
            if np.prod(coarse / base) > 1.05:
                target = tuple(float(round(t, 4)) for t in coarse)
                patch = _same_field_of_view(net, patch, base, coarse, shapes, spacings)
                reasons["spacing"] = (
                    f"{'x'.join(f'{t:.2f}' for t in target)} mm, {np.prod(coarse / base):.1f}x fewer voxels than "
                    f"{'x'.join(f'{t:.2f}' for t in base)} mm: the patch keeps the field of view of the budget-free "
                    f"plan within the budget; coarsening stops at {MAX_COARSENING:g}x the finest spacing and where "
                    f"the {why_limit} would span fewer than {MIN_DIAMETER_VOXELS} voxels")
            else:
                reasons["spacing"] += f"; not coarsened: the {why_limit} allows no coarser spacing"
    if "patch_size" not in fixed and steps(net, patch, batch) < need:
        patch = _shrink_patch(net, patch, net.cost(profile).max_voxels(batch, train_seconds / need), shapes,
                              spacings, target)
        reasons["patch"] = ("shrunk from the median case (largest axis first, not below "
                            f"{MIN_PATCH_EDGE_3D if net.spatial_dims == 3 else MIN_PATCH_EDGE_2D} voxels or the case) "
                            "until a step fits the budget")
    got = steps(net, patch, batch)
    short = "" if got >= need else "; fewer than needed: the budget is too short for this data"
    reasons["budget"] = f"{budget_words}: about {got:.0f} steps expected ({why_need}){short}"
    return target, net, patch, batch, _price(net, profile, patch, batch)


def _price(net: _Net, profile: Any, patch: list[int], batch: int) -> dict[str, Any]:
    from medzoo.planning.device import network_key

    key = network_key(net.model, net.spatial_dims, net.kwargs, net.in_channels, net.num_classes)
    return {"network": key, "step_seconds": float(net.cost(profile).seconds(batch, tuple(patch)))}


def _same_field_of_view(net: _Net, patch: list[int], base: np.ndarray, coarse: np.ndarray, shapes: np.ndarray,
                        spacings: np.ndarray) -> list[int]:
    """The patch at the ``coarse`` spacing that spans what ``patch`` spans at ``base``: the median case at the new
    spacing is larger than a patch capped at the budget-free maximum, so re-fitting to it would widen the view
    instead of saving voxels."""
    axes = [a for a in range(3) if net.spatial_dims == 3 or a != net.slice_axis]
    refit, _ = _patch_and_batch(net, shapes, spacings, tuple(coarse))
    return [min(r, _fit(p * base[a] / coarse[a], net.divisor, net.min_size, r)) for r, p, a in zip(refit, patch, axes)]


def _shrink_patch(net: _Net, patch: list[int], max_voxels: float, shapes: np.ndarray, spacings: np.ndarray,
                  target: Any) -> list[int]:
    """Shrink the largest axis by the size divisor while the patch exceeds ``max_voxels`` and stays above the
    context floor (or the median case, when that is smaller)."""
    edge = MIN_PATCH_EDGE_3D if net.spatial_dims == 3 else MIN_PATCH_EDGE_2D
    median_shape = _median_shape(shapes, spacings, target)
    if net.spatial_dims == 2:
        median_shape = [s for a, s in enumerate(median_shape) if a != net.slice_axis]
    floor = [max(_fit(min(edge, s), net.divisor, net.min_size, 10**6), net.min_size) for s in median_shape]
    patch = list(patch)
    while math.prod(patch) > max_voxels:
        shrinkable = [i for i in range(len(patch)) if patch[i] - net.divisor >= floor[i]]
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda a: patch[a])
        patch[i] -= net.divisor
    return patch


def _norm_stats(fingerprint: dict[str, Any] | None, n_channels: int) -> list[dict[str, float]]:
    """Per-channel foreground intensity statistics from the fingerprint (used by the "ct" scheme)."""
    if not fingerprint:
        return []
    stats = fingerprint.get("intensity") or fingerprint.get("foreground_intensity") or fingerprint.get(
        "intensity_stats"
    )
    if isinstance(stats, dict):
        stats = [stats.get(str(c), stats.get(c)) for c in range(n_channels)]
    if not isinstance(stats, list) or len(stats) != n_channels or not all(isinstance(s, dict) for s in stats):
        return []
    return [{k: float(v) for k, v in s.items() if isinstance(v, (int, float))} for s in stats]


def plan_dataset(data: str, layout: str | None = None, layout_options: dict[str, Any] | None = None, *,
                 time_budget: float | None = None, device: str | None = None, **overrides: Any) -> Plan:
    """The plan ``medzoo train`` would make for a dataset folder, without training: the dataset is read
    (layout auto-detected unless given), fingerprinted and planned (under ``time_budget`` seconds, if given,
    with steps priced on ``device``: None picks CUDA when available, as training does)."""
    from medzoo import runtime
    from medzoo.data.layouts import load_dataset
    from medzoo.planning.device import device_profile
    from medzoo.planning.fingerprint import compute_fingerprint

    info = load_dataset(data, layout=layout, **(layout_options or {}))
    profile = None if time_budget is None else device_profile(str(runtime.resolve_device(device)))
    return make_plan(info, compute_fingerprint(info), time_budget=time_budget, device_profile=profile, **overrides)


def describe_plan(plan: Plan) -> str:
    """The plan's choices and their reasons, one per line (what ``medzoo plan`` prints)."""
    spacing = "native" if plan.target_spacing is None else " x ".join(f"{s:.3g}" for s in plan.target_spacing)
    spacing += "" if plan.target_spacing is None else " mm"
    dims = f"{plan.spatial_dims}D" + (f", slices along axis {plan.slice_axis}" if plan.spatial_dims == 2 else "")
    lines = [
        f"network   {plan.model} ({dims}) {json.dumps(plan.model_kwargs, sort_keys=True)}",
        f"spacing   {spacing}",
        f"patch     {'x'.join(map(str, plan.patch_size))}, batch {plan.batch_size}",
        f"channels  {plan.in_channels} in ({', '.join(plan.modalities)}), {plan.num_classes} classes; "
        f"normalisation {', '.join(plan.normalization)}; crop to non-zero: {'yes' if plan.crop_to_nonzero else 'no'}",
        "why:",
    ]
    lines += [f"  {key}: {text}" for key, text in plan.extra.get("reasons", {}).items()]
    return "\n".join(lines)
