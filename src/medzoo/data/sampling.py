"""Patch samplers: where in a case the next training patch is centred.

A sampler is called as ``sampler(case, patch_size, rng, force_foreground)`` and returns the patch centre
(integer voxel coordinates, one per spatial axis of the case). ``patch_size`` has one entry per axis of the
case (for 2D training on 3D data the sliced axis has size 1). The patch ``[centre - P // 2, centre - P // 2
+ P)`` may reach outside the case; :func:`crop_with_padding` pads it with zeros.

Sparsely annotated cases (voxels of the ignore label, :data:`medzoo.utils.IGNORE_INDEX`): no sampler
centres a patch on an unannotated voxel by choice of class, and where a sampler would draw a uniform centre
it draws a random annotated voxel instead, so every patch holds annotation.

Samplers (names for ``PatchLoader(sampler=...)``):

- ``uniform``: a uniformly random patch inside the case.
- ``foreground``: when ``force_foreground`` (the loader forces the last ``oversample_foreground`` fraction
  of each batch, like nnU-Net) pick a random foreground class present in the case, then a random voxel of
  it, as the centre; otherwise uniform.
- ``class_balanced``: every patch centred on a random voxel of a class drawn uniformly among the classes
  present (background included).
- ``threshold``: MedicalZoo's rule — draw uniform patches until the fraction of foreground voxels in the
  patch exceeds ``threshold`` (at most ``max_tries``; the best patch drawn is used otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medzoo.errors import ConfigError
from medzoo.utils import IGNORE_INDEX


def _bounds(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest centre keeping the patch inside the case (lo > hi when the case is smaller)."""
    p = np.asarray(patch)
    lo = p // 2
    hi = np.asarray(shape) - (p - p // 2)
    return lo, hi


def clamp_centre(centre: np.ndarray, shape: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """Move ``centre`` so the patch stays inside the case where the case is large enough.

    The voxel at the original centre stays inside the patch.
    """
    lo, hi = _bounds(shape, patch)
    a, b = np.minimum(lo, hi), np.maximum(lo, hi)
    return np.clip(centre, a, b)


def uniform_centre(shape: tuple[int, ...], patch: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A uniformly random centre keeping the patch inside (a random offset when the case is smaller)."""
    lo, hi = _bounds(shape, patch)
    a, b = np.minimum(lo, hi), np.maximum(lo, hi)
    return np.array([int(rng.integers(x, y + 1)) for x, y in zip(a, b)])


def _class_voxel(case, classes: list[int], rng: np.random.Generator) -> np.ndarray | None:
    locs = case.class_locations
    present = [k for k in classes if k in locs and len(locs[k]) and k != IGNORE_INDEX]
    if not present:
        return None
    k = present[int(rng.integers(len(present)))]
    return np.asarray(locs[k][int(rng.integers(len(locs[k])))], dtype=np.int64)


def _sparse(case) -> bool:
    locs = getattr(case, "class_locations", None) or {}
    return IGNORE_INDEX in locs and len(locs[IGNORE_INDEX]) > 0


def _any_centre(case, patch_size, rng) -> np.ndarray:
    """Uniform centre, or on a sparsely annotated case a random annotated voxel (any class)."""
    if _sparse(case):
        voxel = _class_voxel(case, sorted(case.class_locations), rng)
        if voxel is not None:
            return clamp_centre(voxel, case.shape, patch_size)
    return uniform_centre(case.shape, patch_size, rng)


def sample_uniform(case, patch_size, rng, force_foreground=False) -> np.ndarray:
    """Uniform centre (an annotated voxel on sparsely annotated cases)."""
    return _any_centre(case, patch_size, rng)


def sample_foreground(case, patch_size, rng, force_foreground=False) -> np.ndarray:
    """Centre on a random voxel of a random foreground class present when forced, else uniform."""
    if force_foreground:
        voxel = _class_voxel(case, sorted(k for k in case.class_locations if k != 0), rng)
        if voxel is not None:
            return clamp_centre(voxel, case.shape, patch_size)
    return _any_centre(case, patch_size, rng)


def sample_class_balanced(case, patch_size, rng, force_foreground=False) -> np.ndarray:
    """Centre on a random voxel of a class drawn uniformly among those present (background included)."""
    voxel = _class_voxel(case, sorted(case.class_locations), rng)
    if voxel is None:
        return _any_centre(case, patch_size, rng)
    return clamp_centre(voxel, case.shape, patch_size)


class ThresholdSampler:
    """MedicalZoo's sampler: retry uniform patches until the foreground fraction exceeds ``threshold``.

    Args:
        threshold: minimum fraction of non-background voxels in the patch.
        max_tries: bound on the draws; the patch with the largest fraction is used when none passes.
    """

    def __init__(self, threshold: float = 0.1, max_tries: int = 10) -> None:
        self.threshold, self.max_tries = float(threshold), int(max_tries)

    def __call__(self, case, patch_size, rng, force_foreground=False) -> np.ndarray:
        best, best_frac = None, -1.0
        for _ in range(max(1, self.max_tries)):
            centre = uniform_centre(case.shape, patch_size, rng)
            if case.label is None:
                return centre
            patch = crop_with_padding(case.label, centre, patch_size)
            frac = float(np.count_nonzero((patch != 0) & (patch != IGNORE_INDEX))) / patch.size
            if frac > self.threshold:
                return centre
            if frac > best_frac:
                best, best_frac = centre, frac
        return best


def get_sampler(name: str | Callable, **options) -> Callable:
    """A sampler by name (``uniform``, ``foreground``, ``class_balanced``, ``threshold``) or a callable."""
    if callable(name):
        return name
    if name == "threshold":
        return ThresholdSampler(**options)
    table = {"uniform": sample_uniform, "foreground": sample_foreground, "class_balanced": sample_class_balanced}
    if name not in table:
        raise ConfigError(f"unknown sampler '{name}' (known: uniform, foreground, class_balanced, threshold)")
    return table[name]


def crop_with_padding(array: np.ndarray, centre, size, out: np.ndarray | None = None) -> np.ndarray:
    """The block of ``size`` centred at ``centre`` (start ``centre - size // 2``) over the LAST axes of ``array``.

    Leading axes (channels) are kept whole; voxels outside ``array`` are 0. Reads only the needed part,
    so ``array`` may be a memmap.

    Args:
        array: (..., *S) source.
        centre: block centre, one entry per axis of ``size``.
        size: block size.
        out: optional destination (..., *size) (any strides, e.g. a flipped view) written in place.
    """
    nd = len(size)
    lead = array.shape[: array.ndim - nd]
    spatial = array.shape[array.ndim - nd :]
    # plain Python ints: this runs twice per patch, and small-array numpy calls cost more than the copy
    size = [int(p) for p in size]
    start = [int(c) - p // 2 for c, p in zip(centre, size)]
    src = [slice(max(a, 0), min(a + p, n)) for a, p, n in zip(start, size, spatial)]
    inside = all(sl.start == a and sl.stop == a + p for sl, a, p in zip(src, start, size))
    if out is None:
        if inside:
            return np.array(array[(Ellipsis,) + tuple(src)], copy=True)
        out = np.zeros(lead + tuple(size), dtype=array.dtype)
    elif not inside:
        out[...] = 0  # one contiguous fill (faster than zeroing the margins slab by slab)
    if any(sl.stop <= sl.start for sl in src):
        return out
    dst = [slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start)]
    out[(Ellipsis,) + tuple(dst)] = array[(Ellipsis,) + tuple(src)]
    return out
