"""Spatial preprocessing on numpy arrays: resampling to a spacing and cropping to the non-zero region.

Each step is a small class with ``__call__`` (forward, records what it did in ``meta``) and ``invert``
(maps an array on the output grid back to the input grid). Resampling uses the half-voxel ("align
centres") convention: output voxel ``o`` along an axis maps to input coordinate ``(o + 0.5) * s - 0.5``
with ``s = in_size / out_size``, so a resample and its inverse share the same physical extent.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: nnU-Net's rule: an axis is resampled separately when the spacing ratio exceeds this.
ANISOTROPY_THRESHOLD = 3.0


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Shape after resampling ``shape`` at ``spacing`` to ``target`` spacing (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def lowres_axis(spacing: tuple[float, ...], target: tuple[float, ...] | None = None) -> int | None:
    """The axis to resample separately (nnU-Net's rule), or None when the grid is not anisotropic.

    The original spacing is checked first, then the target spacing.
    """
    for sp in (spacing, target):
        if sp is None:
            continue
        sp = np.asarray(sp, dtype=float)
        if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
            return int(np.argmax(sp))
    return None


def _resample_channel(
    data: np.ndarray, new_shape: tuple[int, ...], order: int, axes: tuple[int, ...] | None = None
) -> np.ndarray:
    """Resample one (*S) array to ``new_shape`` along ``axes`` (others must keep their size)."""
    old = np.asarray(data.shape, dtype=float)
    new = np.asarray(new_shape, dtype=float)
    scale = old / new
    if axes is not None:
        keep = [a for a in range(data.ndim) if a not in axes]
        assert all(data.shape[a] == new_shape[a] for a in keep)
    offset = 0.5 * scale - 0.5
    mode = "nearest"
    src = data if data.dtype in (np.float32, np.float64) else data.astype(np.float32)
    out = ndimage.affine_transform(
        src, scale, offset=offset, output_shape=tuple(int(n) for n in new_shape), order=order, mode=mode,
        prefilter=order > 1,
    )
    return out


def resample_array(
    array: np.ndarray,
    new_shape: tuple[int, ...],
    *,
    order: int = 1,
    separate_axis: int | None = None,
    order_separate: int = 0,
) -> np.ndarray:
    """Resample a channel-first array ``(C, *S)`` to ``(C, *new_shape)``.

    Args:
        array: input, any numeric dtype.
        new_shape: spatial output shape.
        order: spline order (0 nearest, 1 linear, 3 cubic) in-plane / on all axes.
        separate_axis: anisotropic axis resampled in a second pass with ``order_separate`` (nnU-Net style).
        order_separate: order along ``separate_axis``.

    Returns:
        float32 array (C, *new_shape) (or the input dtype for ``order == 0`` on integer input).
    """
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(array.shape[1:]) == new_shape:
        return array.copy()
    out_dtype = array.dtype if (order == 0 and (separate_axis is None or order_separate == 0)) else np.float32
    outs = []
    for c in range(array.shape[0]):
        data = array[c]
        if separate_axis is None:
            res = _resample_channel(data, new_shape, order)
        else:
            plane_shape = tuple(new_shape[a] if a != separate_axis else data.shape[a] for a in range(data.ndim))
            res = data
            if plane_shape != data.shape:
                res = _resample_channel(data, plane_shape, order)
            if plane_shape != new_shape:
                res = _resample_channel(res, new_shape, order_separate)
        outs.append(res.astype(out_dtype, copy=False))
    return np.stack(outs)


def resample_labels(label: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map ``(*S)`` (keeps its dtype)."""
    if tuple(label.shape) == tuple(new_shape):
        return label.copy()
    return _resample_channel(label, tuple(new_shape), 0).astype(label.dtype)


def scaled_affine(affine: np.ndarray, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """The affine of the grid ``new_shape`` covering the same extent as ``old_shape`` (half-voxel convention)."""
    s = np.ones(3)
    s[: len(old_shape)] = np.asarray(old_shape, dtype=float) / np.asarray(new_shape, dtype=float)
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, :3] = affine[:3, :3] @ np.diag(s)
    out[:3, 3] = affine[:3, :3] @ (0.5 * s - 0.5) + affine[:3, 3]
    return out


def shifted_affine(affine: np.ndarray, start: tuple[int, ...]) -> np.ndarray:
    """The affine of a crop starting at voxel ``start``."""
    out = np.array(affine, dtype=np.float64, copy=True)
    shift = np.zeros(3)
    shift[: len(start)] = start
    out[:3, 3] = affine[:3, :3] @ shift + affine[:3, 3]
    return out


def nonzero_bbox(image: np.ndarray, margin: int = 0) -> list[list[int]]:
    """``[[start, stop], ...]`` per spatial axis of voxels non-zero in any channel of ``image (C, *S)``.

    An all-zero image gives the full extent.
    """
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return [[0, n] for n in mask.shape]
        box.append([max(0, int(hits[0]) - margin), min(mask.shape[axis], int(hits[-1]) + 1 + margin)])
    return box


class CropToNonzero:
    """Crop image and label to the bounding box of non-zero image voxels (any channel).

    ``meta["crop_box"]`` records ``[[start, stop], ...]`` in the input grid; :meth:`invert` pads back.
    """

    def __init__(self, margin: int = 0) -> None:
        self.margin = margin

    def __call__(self, image: np.ndarray, label: np.ndarray | None, meta: dict):
        box = nonzero_bbox(image, self.margin)
        sl = tuple(slice(a, b) for a, b in box)
        meta["crop_box"] = box
        meta["cropped_shape"] = [b - a for a, b in box]
        meta["affine"] = shifted_affine(np.asarray(meta["affine"]), tuple(a for a, _ in box)).tolist()
        image = np.ascontiguousarray(image[(slice(None),) + sl])
        if label is not None:
            label = np.ascontiguousarray(label[sl])
        return image, label

    @staticmethod
    def invert(array: np.ndarray, meta: dict, is_label: bool, full_shape: tuple[int, ...]) -> np.ndarray:
        """Pad ``array`` ((*S) labels or (K, *S) probabilities) back into ``full_shape``; outside = background."""
        box = meta["crop_box"]
        sl = tuple(slice(a, b) for a, b in box)
        if is_label:
            out = np.zeros(full_shape, dtype=array.dtype)
            out[sl] = array
            return out
        out = np.zeros((array.shape[0],) + tuple(full_shape), dtype=array.dtype)
        out[0] = 1  # background probability outside the crop
        out[(slice(None),) + sl] = array
        return out


class Resample:
    """Resample to a target spacing: images with spline ``order`` (1 linear, 3 cubic), labels nearest.

    Anisotropy-aware like nnU-Net: when the spacing ratio exceeds 3 the low-resolution axis is resampled
    in a separate pass with ``order_separate`` (0 nearest by default, 1 linear).
    """

    def __init__(self, target_spacing: tuple[float, ...], order: int = 3, order_separate: int = 0) -> None:
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.order = order
        self.order_separate = order_separate

    def __call__(self, image: np.ndarray, label: np.ndarray | None, meta: dict):
        spacing = tuple(meta["spacing"])
        shape = tuple(image.shape[1:])
        new_shape = resampled_shape(shape, spacing, self.target_spacing)
        axis = lowres_axis(spacing, self.target_spacing)
        meta["resample_from_shape"] = list(shape)
        meta["resampled_shape"] = list(new_shape)
        meta["separate_axis"] = axis
        if new_shape == shape:
            return image, label
        meta["affine"] = scaled_affine(np.asarray(meta["affine"]), shape, new_shape).tolist()
        image = resample_array(
            image, new_shape, order=self.order, separate_axis=axis, order_separate=self.order_separate
        ).astype(np.float32, copy=False)
        if label is not None:
            label = resample_labels(label, new_shape)
        return image, label

    @staticmethod
    def invert(array: np.ndarray, meta: dict, is_label: bool) -> np.ndarray:
        """Resample ``array`` ((*S') labels nearest, (K, *S') probabilities linear) to the pre-resample shape."""
        shape = tuple(meta["resample_from_shape"])
        current = array.shape if is_label else array.shape[1:]
        if tuple(current) == shape:
            return array
        if is_label:
            return resample_labels(array, shape)
        return resample_array(array.astype(np.float32, copy=False), shape, order=1)
