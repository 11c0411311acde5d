"""Label overlays: an image with a coloured label map, in three orthogonal planes.

Planes are taken through the label's centre of mass (the image centre when the label is empty). For a 3D array
(I, J, K) the three panels are the slices k = const (rows J, columns I), j = const (rows K, columns I) and
i = const (rows K, columns J), drawn with row 0 at the bottom so the second axis points up. No orientation
is inferred from an affine: this is a voxel-grid view, with the aspect ratio taken from ``spacing``.

- :func:`overlay_slices` returns an RGB ``uint8`` array (numpy only; for TensorBoard ``add_image``).
- :func:`save_overlay_png` writes a PNG with matplotlib (Agg backend), atomically.
- :func:`save_comparison_png` writes reference vs prediction (two rows) for evaluation reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medzoo.utils import atomic_write

log = logging.getLogger(__name__)

__all__ = ["PALETTE", "label_colors", "overlay_slices", "save_comparison_png", "save_overlay_png", "slice_planes"]

# Distinct colours for labels 1, 2, 3, ... (cycled); background is transparent.
PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
    ],
    dtype=np.uint8,
)


def label_colors(num_labels: int) -> np.ndarray:
    """RGB colours (num_labels, 3) uint8 for labels 1..num_labels."""
    return PALETTE[np.arange(num_labels) % len(PALETTE)]


def _centre(label: np.ndarray) -> tuple[int, ...]:
    """Voxel index of the label's centre of mass (foreground = label > 0), or the array centre if empty."""
    fg = np.asarray(label) > 0
    if not fg.any():
        return tuple(n // 2 for n in fg.shape)
    idx = []
    for axis in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != axis)
        counts = fg.sum(axis=other, dtype=np.float64)
        idx.append(int(round(float((counts * np.arange(fg.shape[axis])).sum() / counts.sum()))))
    return tuple(idx)


def slice_planes(
    array: np.ndarray, centre: Sequence[int], spacing: Sequence[float] | None = None
) -> list[tuple[np.ndarray, float]]:
    """The three orthogonal slices through ``centre`` of a 3D array (or the array itself for 2D).

    Returns:
        A list of ``(slice2d, aspect)``: ``slice2d`` has rows along the plane's second axis (to draw with
        origin at the bottom), ``aspect`` is the row/column pixel size ratio (``imshow(aspect=...)``).
    """
    sp = [1.0] * array.ndim if spacing is None else [float(s) for s in spacing]
    if array.ndim == 2:
        return [(array.T, sp[1] / sp[0])]
    if array.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {array.shape}")
    i, j, k = (int(c) for c in centre)
    return [
        (array[:, :, k].T, sp[1] / sp[0]),
        (array[:, j, :].T, sp[2] / sp[0]),
        (array[i, :, :].T, sp[2] / sp[1]),
    ]


def _normalise(image: np.ndarray) -> np.ndarray:
    """Image to [0, 1] with a 1-99 percentile window over the whole volume (robust to outliers)."""
    img = np.asarray(image, dtype=np.float32)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros_like(img)
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1)


def _blend(gray: np.ndarray, label: np.ndarray, alpha: float) -> np.ndarray:
    """Grey slice in [0, 1] + integer label slice -> RGB uint8."""
    rgb = np.repeat((gray * 255).astype(np.float32)[..., None], 3, axis=-1)
    lab = np.asarray(label).astype(np.int64)
    fg = lab > 0
    if fg.any():
        colors = PALETTE[(lab[fg] - 1) % len(PALETTE)].astype(np.float32)
        rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colors
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _as_spatial(array: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be (I, J, K) or (I, J); got shape {arr.shape}")
    return arr


def overlay_slices(
    image: np.ndarray | None, label: np.ndarray, spacing: Sequence[float] | None = None, alpha: float = 0.45,
    gap: int = 2,
) -> np.ndarray:
    """The three orthogonal overlay planes side by side as one RGB image (for TensorBoard).

    Args:
        image: (I, J, K) or (I, J) intensities (None: black background).
        label: integer map of the same shape.
        spacing: unused for the pixel grid (pixels are voxels); accepted for symmetry with
            :func:`save_overlay_png`.
        alpha: label opacity.
        gap: black columns between panels.

    Returns:
        uint8 array (H, W, 3), panels flipped so the second in-plane axis points up.
    """
    label = _as_spatial(label, "label")
    image = np.zeros(label.shape, np.float32) if image is None else _as_spatial(image, "image")
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} differs from label shape {label.shape}")
    gray = _normalise(image)
    centre = _centre(label)
    panels = [
        _blend(g[::-1], lab[::-1], alpha)
        for (g, _), (lab, _) in zip(slice_planes(gray, centre), slice_planes(label, centre))
    ]
    height = max(p.shape[0] for p in panels)
    padded = []
    for n, p in enumerate(panels):
        top = np.zeros((height - p.shape[0], p.shape[1], 3), np.uint8)
        padded.append(np.concatenate([top, p], axis=0))
        if n < len(panels) - 1 and gap > 0:
            padded.append(np.zeros((height, gap, 3), np.uint8))
    return np.ascontiguousarray(np.concatenate(padded, axis=1))


_PLANE_NAMES_3D = ("k (axial-like)", "j (coronal-like)", "i (sagittal-like)")


def _draw_row(axes, image: np.ndarray, label: np.ndarray, spacing, centre, alpha: float, row_title: str | None):
    gray = _normalise(image)
    names = _PLANE_NAMES_3D if image.ndim == 3 else ("slice",)
    for n, ((g, aspect), (lab, _)) in enumerate(zip(slice_planes(gray, centre, spacing), slice_planes(label, centre))):
        ax = axes[n]
        ax.imshow(_blend(g, lab, alpha), origin="lower", aspect=aspect, interpolation="nearest")
        text = f"{names[n]} = {centre[2 - n] if image.ndim == 3 else ''}".rstrip(" =")
        ax.set_title(text if row_title is None else f"{row_title}: {text}", fontsize=8)
        ax.set_axis_off()


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def save_overlay_png(
    image: np.ndarray | None,
    label: np.ndarray,
    path: str | Path,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """Write a PNG with the image and its coloured label in three planes through the label's centre of mass.

    Args:
        image: (I, J, K) (or (1, I, J, K), or 2D (I, J)) intensities; None draws the label on black.
        label: integer map of the same shape.
        path: output .png (written atomically; folders are created).
        spacing: voxel size (mm) per axis, for the aspect ratio (default isotropic).
        title: figure title.
        alpha: label opacity.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = _as_spatial(label, "label")
    image = np.zeros(label.shape, np.float32) if image is None else _as_spatial(image, "image")
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} differs from label shape {label.shape}")
    n = 3 if label.ndim == 3 else 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    _draw_row(axes[0], image, label, spacing, _centre(label), alpha, None)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, Path(path))


def save_comparison_png(
    image: np.ndarray | None,
    reference: np.ndarray,
    prediction: np.ndarray,
    path: str | Path,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """Reference (top row) and prediction (bottom row) over the image, three planes through the reference's
    centre of mass (the prediction's when the reference is empty). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = _as_spatial(reference, "reference")
    prediction = _as_spatial(prediction, "prediction")
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    image = np.zeros(reference.shape, np.float32) if image is None else _as_spatial(image, "image")
    if image.shape != reference.shape:
        raise ValueError(f"image shape {image.shape} differs from label shape {reference.shape}")
    centre = _centre(reference if np.any(reference > 0) else prediction)
    n = 3 if reference.ndim == 3 else 1
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.4), squeeze=False)
    _draw_row(axes[0], image, reference, spacing, centre, alpha, "reference")
    _draw_row(axes[1], image, prediction, spacing, centre, alpha, "prediction")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, Path(path))
