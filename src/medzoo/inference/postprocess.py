"""Label-map post-processing: keep the largest component, fill holes, drop small components.

All functions take an integer label map (*S) (2D or 3D, any integer dtype; 0 = background) and return a new
map of the same shape and dtype. ``classes`` selects which foreground classes are processed (default: every
class present). Connectivity is face connectivity (6 neighbours in 3D, 4 in 2D), as nnU-Net uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PostProcess", "fill_holes", "keep_largest_component", "remove_small_components"]


def _classes(labels: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    if classes is not None:
        return [int(c) for c in classes if int(c) != 0]
    return [int(c) for c in np.unique(labels) if c != 0]


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a mask (so labelling runs on the object's box, not the whole volume)."""
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    return boxes[0] if boxes else None


def keep_largest_component(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """For each class, keep only its largest connected component; the rest becomes background.

    Args:
        labels: integer label map (*S).
        classes: foreground classes to process (default: all present).

    Returns:
        The cleaned label map (a copy).
    """
    out = labels.copy()
    for c in _classes(labels, classes):
        mask = labels == c
        box = _bbox(mask)
        if box is None:
            continue
        comp, n = ndimage.label(mask[box])
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        sub = out[box]
        sub[(comp != 0) & (comp != int(sizes.argmax()))] = 0
    return out


def remove_small_components(
    labels: np.ndarray, min_size: int, classes: Iterable[int] | None = None
) -> np.ndarray:
    """Set every connected component smaller than ``min_size`` voxels to background.

    Args:
        labels: integer label map (*S).
        min_size: components with fewer voxels are removed.
        classes: foreground classes to process (default: all present).

    Returns:
        The cleaned label map (a copy).
    """
    out = labels.copy()
    if min_size <= 1:
        return out
    for c in _classes(labels, classes):
        mask = labels == c
        box = _bbox(mask)
        if box is None:
            continue
        comp, _ = ndimage.label(mask[box])
        sizes = np.bincount(comp.ravel())
        small = sizes < min_size
        small[0] = False
        sub = out[box]
        sub[small[comp]] = 0
    return out


def fill_holes(labels: np.ndarray, classes: Iterable[int] | None = None) -> np.ndarray:
    """Fill background cavities fully enclosed by one class with that class.

    Only voxels that are background (0) are filled, so a class enclosing another class keeps it.

    Args:
        labels: integer label map (*S).
        classes: foreground classes to process (default: all present).

    Returns:
        The filled label map (a copy).
    """
    out = labels.copy()
    for c in _classes(labels, classes):
        mask = labels == c
        box = _bbox(mask)
        if box is None:
            continue
        filled = ndimage.binary_fill_holes(mask[box])
        sub = out[box]
        sub[filled & (sub == 0)] = c
    return out


@dataclass
class PostProcess:
    """A configurable post-processing chain, applied in the order: fill holes, small components, largest.

    Attributes:
        keep_largest: keep only the largest component of each class.
        fill_holes: fill enclosed background cavities of each class.
        min_size: drop components with fewer voxels (0 = off).
        classes: classes to process (None = every class present).
    """

    keep_largest: bool = False
    fill_holes: bool = False
    min_size: int = 0
    classes: tuple[int, ...] | None = None

    @property
    def active(self) -> bool:
        """Whether any step is switched on."""
        return self.keep_largest or self.fill_holes or self.min_size > 1

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """Apply the switched-on steps to a label map (*S); returns a new array."""
        if self.fill_holes:
            labels = fill_holes(labels, self.classes)
        if self.min_size > 1:
            labels = remove_small_components(labels, self.min_size, self.classes)
        if self.keep_largest:
            labels = keep_largest_component(labels, self.classes)
        return labels
