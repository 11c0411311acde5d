"""Conversions shared by the file readers and the DICOM reader: SimpleITK images to channel-first arrays with a
RAS+ affine, the finite-values check, and one-line descriptions of library errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medzoo.errors import VolumeError

__all__ = ["LPS_TO_RAS", "check_finite", "one_line", "sitk_to_array_affine"]

#: LPS <-> RAS: flip the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def one_line(err: BaseException) -> str:
    """A short single-line description of a library exception."""
    text = " ".join(str(err).split())
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    # SimpleITK messages are multi-line with file/line noise; keep the most specific line.
    for line in reversed(lines):
        for marker in ("Description:", "sitk::ERROR:"):
            if marker in line:
                text = line.split(marker, 1)[1].strip()
                break
        else:
            continue
        break
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_finite(array: np.ndarray, path: Path) -> None:
    """Raise :class:`VolumeError` naming ``path`` when a floating-point ``array`` holds NaN or Inf."""
    if array.dtype.kind not in "fc":
        return
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise VolumeError(
            path, f"contains {bad} NaN/Inf voxel(s) of {array.size}; fix or re-export the image"
        )


def sitk_to_array_affine(image, path: str | Path = "<image>") -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image -> (channel-first array (C, I, J[, K]), 4x4 RAS+ affine).

    SimpleITK's array is (z, y, x[, components]) and its geometry is LPS; both are converted. A 4D scalar
    image is read as (t, z, y, x) with t becoming the channel axis.
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) or (y, x[, c])
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 4 and ncomp == 1:
        # (t, z, y, x) -> (t, x, y, z); geometry from the first three axes
        array = np.transpose(array, (0, 3, 2, 1))
        dim, spacing, origin, direction = 3, spacing[:3], origin[:3], direction[:3, :3]
    elif dim in (2, 3):
        spatial = tuple(range(dim))[::-1]
        if ncomp > 1:
            array = np.transpose(array, (dim, *spatial))
        else:
            array = np.transpose(array, spatial)[None]
    else:
        raise VolumeError(path, f"has {dim} dimensions with {ncomp} components; expected 2D or 3D")
    linear = np.eye(3)
    linear[:dim, :dim] = direction * spacing[None, :]
    offset = np.zeros(3)
    offset[:dim] = origin
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ linear
    affine[:3, 3] = LPS_TO_RAS @ offset
    return np.ascontiguousarray(array), affine
