"""Label-map post-processing: keep the largest component, fill holes, drop small components.

All functions take an integer label map (*S) (2D or 3D, any integer dtype; 0 = background) and return a new
map of the same shape and dtype. ``classes`` selects which foreground classes are processed (default: every
class present). Connectivity is face connectivity (6 neighbours in 3D, 4 in 2D), as nnU-Net uses.

:func:`determine_postprocessing` chooses from data, as nnU-Net's ``determine_postprocessing`` does, whether
keeping the largest connected component (of all foreground together, then of each class) raises the
out-of-fold Dice of a cross-validation; the resulting :class:`ChosenPostprocessing` is stored as
``postprocessing.json`` in the run folder and applied by ``predict``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medzoo.errors import DataError
from medzoo.metrics import dice_per_class
from medzoo.utils import atomic_write_text

__all__ = [
    "POSTPROCESSING_FILE",
    "ChosenPostprocessing",
    "PostProcess",
    "determine_postprocessing",
    "fill_holes",
    "keep_largest_component",
    "keep_largest_foreground",
    "remove_small_components",
]

#: File name of the chosen post-processing in a run folder.
POSTPROCESSING_FILE = "postprocessing.json"


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


def keep_largest_foreground(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected component of all foreground classes taken together; the rest -> 0."""
    out = labels.copy()
    mask = labels != 0
    box = _bbox(mask)
    if box is None:
        return out
    comp, n = ndimage.label(mask[box])
    if n > 1:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        out[box][(comp != 0) & (comp != int(sizes.argmax()))] = 0
    return out


@dataclass
class ChosenPostprocessing:
    """Which largest-component steps a cross-validation found helpful, with the Dice that decided it.

    Attributes:
        foreground: keep the largest component of all foreground together (applied first).
        classes: classes whose largest component alone is kept (applied after, in this order).
        dice_before, dice_after: mean out-of-fold Dice per foreground class, without and with the choice.
    """

    foreground: bool = False
    classes: tuple[int, ...] = ()
    dice_before: dict[int, float] = field(default_factory=dict)
    dice_after: dict[int, float] = field(default_factory=dict)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """Apply the chosen steps to a label map (*S) of class indices; returns a new array."""
        if self.foreground:
            labels = keep_largest_foreground(labels)
        if self.classes:
            labels = keep_largest_component(labels, self.classes)
        return labels

    @property
    def active(self) -> bool:
        """Whether any step was chosen."""
        return self.foreground or bool(self.classes)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "keep_largest_foreground": self.foreground, "keep_largest_classes": list(self.classes),
            "dice_before": {str(k): v for k, v in self.dice_before.items()},
            "dice_after": {str(k): v for k, v in self.dice_after.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ChosenPostprocessing:
        """Read a file written by :meth:`save`.

        Raises:
            DataError: the file is not valid JSON or lacks the decision.
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(
                foreground=bool(d["keep_largest_foreground"]),
                classes=tuple(int(c) for c in d["keep_largest_classes"]),
                dice_before={int(k): float(v) for k, v in d.get("dice_before", {}).items()},
                dice_after={int(k): float(v) for k, v in d.get("dice_after", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a post-processing decision ({err}); delete it or rerun cross-validation") from err


def _mean_dice(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Mean over cases of each foreground class's Dice (classes absent from both maps of a case skipped)."""
    per_case = np.array([dice_per_class(p, r, num_classes, empty_value=np.nan)[1:] for p, r in zip(preds, refs)])
    return np.array([_nanmean(per_case[:, c]) for c in range(num_classes - 1)]) if len(per_case) else (
        np.full(num_classes - 1, np.nan))


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values (NaN when there is none, without numpy's warning)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _better(after: float, before: float) -> bool:
    return bool(np.isfinite(after) and (not np.isfinite(before) or after > before))


def determine_postprocessing(
    predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], num_classes: int
) -> ChosenPostprocessing:
    """Choose the largest-component steps that raise the mean Dice of out-of-fold predictions.

    First all foreground together: kept when the mean over foreground classes rises. Then, on top of that
    choice, each class alone: kept when that class's Dice rises. Ties keep the predictions untouched.

    Args:
        predictions: label maps (class indices) of every cross-validation case, each on its reference's grid.
        references: the matching reference label maps (ignore-label voxels, values >= num_classes, skipped).
        num_classes: K, background included.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    preds = [np.asarray(p) for p in predictions]
    before = _mean_dice(preds, references, num_classes)
    base, chosen = before, ChosenPostprocessing()
    candidate = [keep_largest_foreground(p) for p in preds]
    fg_after = _mean_dice(candidate, references, num_classes)
    if _better(_nanmean(fg_after), _nanmean(base)):
        preds, base, chosen.foreground = candidate, fg_after, True
    classes = []
    for c in range(1, num_classes):
        candidate = [keep_largest_component(p, [c]) for p in preds]
        after = _mean_dice(candidate, references, num_classes)
        if _better(float(after[c - 1]), float(base[c - 1])):
            preds, base = candidate, after
            classes.append(c)
    chosen.classes = tuple(classes)
    chosen.dice_before = {c: float(before[c - 1]) for c in range(1, num_classes)}
    chosen.dice_after = {c: float(base[c - 1]) for c in range(1, num_classes)}
    return chosen
