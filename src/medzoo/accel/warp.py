"""3D resampling on the CPU as 2D ``grid_sample`` calls on a stack of slices.

PyTorch's CPU 3D ``grid_sample`` is a scalar loop; its 2D kernel is vectorised. :func:`sample_by_slices` gives
what ``F.grid_sample`` gives on a 3D region (``align_corners=False``, zero padding; trilinear or nearest for
the image, nearest for the label), with 2D calls: the region's slices are stacked along the rows, each
followed by a zero separator row and framed by zero slices, so a bilinear sample never mixes two slices and
zero padding behaves as in 3D. Trilinear is the linear blend, along the first axis, of two bilinear samples in
neighbouring slices; nearest is the nearest slice, then the nearest voxel in it. Results equal the 3D
``grid_sample`` (the readable reference, which the tests compare it with) up to float32 rounding of the
coordinates. The runtime policy (:func:`medzoo.runtime.resampler_3d`) decides where it is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["sample_by_slices", "stack_slices"]

#: fills ``out`` (B, 3, *P) with the input voxel coordinates read by each output voxel (array axis order),
#: each axis' coordinate times ``scale`` plus ``offset``
Coordinates = Callable[[torch.Tensor, tuple[float, ...], tuple[float, ...]], None]


def stack_slices(x: torch.Tensor) -> torch.Tensor:
    """``x (B, C, R0, R1, R2)`` as the slice stack ``(B, C, (R0 + 3) * (R1 + 1), R2)`` float32 (a copy): slice
    ``i`` of the region is rows ``(i + 1) * (R1 + 1)`` to ``... + R1 - 1``; every other row is zero (one
    separator row after each slice, zero slices -1, R0 and R0 + 1)."""
    lead, (R0, R1, R2) = tuple(x.shape[:2]), tuple(x.shape[2:])
    buf = torch.empty((*lead, R0 + 3, R1 + 1, R2), dtype=torch.float32)
    buf[..., [0, R0 + 1, R0 + 2], :, :] = 0
    buf[..., R1, :] = 0
    buf[..., 1 : R0 + 1, :R1, :].copy_(x)
    return buf.reshape(*lead, (R0 + 3) * (R1 + 1), R2)


def sample_by_slices(image: torch.Tensor, label: torch.Tensor | None, patch: tuple[int, ...],
                     coordinates: Coordinates, image_mode: str = "bilinear"
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample regions ``image (B, C, R0, R1, R2)`` (and ``label (B, 1, R0, R1, R2)``) at the voxel
    coordinates ``coordinates`` gives, to ``(B, C, *patch)`` (and ``(B, 1, *patch)``, integral floats).

    Args:
        image: float32 regions.
        label: float32 label regions (nearest neighbour), or None.
        patch: output size (P0, P1, P2).
        coordinates: see :data:`Coordinates`.
        image_mode: "bilinear" (trilinear in 3D, as ``grid_sample`` names it) or "nearest".
    """
    region = tuple(image.shape[2:])
    R0, R1, R2 = region
    image_stack = stack_slices(image)
    label_stack = None if label is None else stack_slices(label)
    rows = (R0 + 3) * (R1 + 1)
    P = tuple(patch)
    B = image.shape[0]
    # planes (B, 5, *P): z, y (voxels), x (normalised, align_corners=False: the 2D sampler pads along x
    # itself), then the stack rows (normalised) of the bilinear and of the nearest samples. The grids
    # handed to grid_sample are strided (x, row) views of these planes.
    planes = torch.empty((B, 5, *P), dtype=torch.float32)
    coordinates(planes[:, :3], (1.0, 1.0, 2.0 / R2), (0.0, 0.0, 1.0 / R2 - 1))
    zi, yi, _, y_lin, y_near = planes.unbind(1)
    n_plane = planes.stride(1)

    def grid(y_plane: int) -> torch.Tensor:  # (B, P0 * P1, P2, 2) view: (x, row)
        st = planes.stride()
        return planes.as_strided((B, P[0] * P[1], P[2], 2), (st[0], st[3], st[4], (y_plane - 2) * n_plane),
                                 planes.storage_offset() + 2 * n_plane)

    yi.clamp_(-1.0, float(R1))  # never reach into the neighbouring slice (its separator row is zero)
    step = float(R1 + 1)  # stack rows per slice

    def to_rows(z_index: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        # normalised stack row of (slice z, row y): ((z + 1) * (R1 + 1) + y + 0.5) * 2 / rows - 1
        torch.add(y, z_index, alpha=step, out=out)
        out.mul_(2.0 / rows).add_((2.0 * step + 1.0) / rows - 1.0)

    out = lab = None
    if image_mode == "nearest" or label_stack is not None:
        zn = torch.round(zi).clamp_(-1.0, float(R0))  # the stack holds zero slices -1, R0 and R0 + 1
        to_rows(zn, torch.round(yi), y_near)  # rounded here: the sampler lands on a voxel centre
        near = grid(4)
        if label_stack is not None:
            lab = F.grid_sample(label_stack, near, mode="nearest", padding_mode="zeros", align_corners=False)
            lab = lab.reshape(B, 1, *P)
        if image_mode == "nearest":
            out = F.grid_sample(image_stack, near, mode="nearest", padding_mode="zeros", align_corners=False)
            out = out.reshape(B, -1, *P)
    if out is None:
        zi.clamp_(-1.0, float(R0))
        z0 = torch.floor(zi)
        frac = zi.sub_(z0).reshape(B, 1, P[0] * P[1], P[2])  # weight of slice z0 + 1
        to_rows(z0, yi, y_lin)
        lin = grid(3)
        lower = F.grid_sample(image_stack, lin, mode="bilinear", padding_mode="zeros", align_corners=False)
        y_lin += step * 2.0 / rows
        upper = F.grid_sample(image_stack, lin, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = lower.lerp_(upper, frac).reshape(B, -1, *P)
    return out, lab
