"""The :class:`Volume`: a voxel array plus the 4x4 affine that places it in patient space.

Convention (see DESIGN.md): arrays are channel-first in the file's voxel order, ``(C, I, J, K)`` for 3D and
``(C, I, J)`` for 2D, where (I, J, K) are the axes of the affine. The affine maps voxel indices to RAS+
world coordinates in millimetres, as NIfTI and nibabel do. Spacing and orientation are never stored apart:
they are derived from the affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A channel-first voxel array and its voxel-to-world (RAS+, mm) affine.

    Attributes:
        array: voxel data, shape (C, I, J, K) (or (C, I, J) for 2D images). Any dtype.
        affine: float64 array (4, 4): voxel index (i, j, k, 1) -> world (x, y, z, 1) in RAS+ mm.
        meta: free-form metadata (e.g. the source path); never used for geometry.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.array.ndim not in (3, 4):
            raise ValueError(
                f"Volume arrays are channel-first (C, I, J[, K]); got {self.array.ndim} dimensions"
            )

    @property
    def num_channels(self) -> int:
        """Number of channels C."""
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The spatial shape (I, J, K) (or (I, J))."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.array.ndim - 1

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial axis, from the affine's column norms."""
        return spacing_from_affine(self.affine)[: self.spatial_dims]

    @property
    def direction(self) -> np.ndarray:
        """The 3x3 matrix of unit column vectors (axis directions in RAS+)."""
        return direction_from_affine(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS+, mm) of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"``: where each voxel axis points most closely."""
        return orientation_from_affine(self.affine)

    def with_array(self, array: np.ndarray) -> Volume:
        """A new Volume on the same grid with another array of the same spatial shape."""
        if tuple(array.shape[1:]) != self.spatial_shape:
            raise ValueError(f"spatial shape {tuple(array.shape[1:])} != {self.spatial_shape}")
        return Volume(array, self.affine.copy(), dict(self.meta))

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when ``other`` has the same spatial shape and (within ``atol``) the same affine."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=atol)
        )


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along i, j, k: the norms of the affine's first three columns."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))  # type: ignore[return-value]


def direction_from_affine(affine: np.ndarray) -> np.ndarray:
    """The affine's 3x3 linear part with unit-length columns."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return a / np.linalg.norm(a, axis=0, keepdims=True)


def orientation_from_affine(affine: np.ndarray) -> str:
    """Three letters naming where voxel axes i, j, k point (R/L, A/P, S/I), from the dominant component."""
    positive, negative = "RAS", "LPI"
    codes = []
    direction = direction_from_affine(affine)
    for axis in range(3):
        column = direction[:, axis]
        world = int(np.argmax(np.abs(column)))
        codes.append(positive[world] if column[world] > 0 else negative[world])
    return "".join(codes)


def make_affine(
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Build a 4x4 affine from spacing, origin and an optional 3x3 rotation (columns = axis directions)."""
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = origin
    return affine
